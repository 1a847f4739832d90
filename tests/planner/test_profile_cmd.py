"""`moeplane profile` on the tiny CPU model (EP2, two processes over gloo): a moeplane.profile/v1
file the planner loads for the same layout, and the same profile in a ConfigMap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from moeplane.api.enums import Role
from moeplane.api.spec import parse_deployment
from moeplane.planner.perf.profile import load_profile
from moeplane.planner.profile_cmd import ProfileError, ProfileGrid, prefill_batch
from moeplane.planner.spec_adapter import profiled_models

from tests.kube.cluster import EmulatedCluster

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_prefill_batches_and_grid_checks() -> None:
    assert prefill_batch(64, 256) == [(0, 64)] * 4
    assert prefill_batch(128, 32) == [(96, 32)]  # the last chunk of one prompt
    with pytest.raises(ProfileError, match="--batch-per-rank"):
        ProfileGrid((1, 2), (1, 2), (4, 2), (0, 8))


@pytest.mark.integration
def test_profile_measures_the_engine_and_writes_a_configmap(
    kube_crds: EmulatedCluster, tmp_path: Path
) -> None:
    out = tmp_path / "tiny-profile.json"
    argv = [
        str(Path(sys.executable).parent / "moeplane"),
        "profile",
        "-f",
        str(ROOT / "examples" / "tiny-cpu.yaml"),
        "-o",
        str(out),
        "--isl",
        "16,64",
        "--tokens",
        "16,64",
        "--batch",
        "1,4",
        "--context",
        "16,128",
        "--repeats",
        "1",
        "--configmap",
        "tiny-profile",
        "--namespace",
        "default",
        "--kubeconfig",
        str(kube_crds.kubeconfig("admin")),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    profile = load_profile(out)
    assert profile.source == "measured" and profile.model == "tiny"
    assert profile.prefill.expert_parallel == 2 and len(profile.decode.step_ms) == 2
    assert all(v > 0 for row in profile.prefill.step_ms + profile.decode.step_ms for v in row)

    manifest = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    manifest["spec"]["planner"] = {"perfModel": "profile", "profileFile": str(out)}
    prefill, decode = profiled_models(parse_deployment(manifest).spec)
    assert prefill.role is Role.PREFILL and decode.decode_step_s(2, 64) > 0

    cm = kube_crds.get("v1", "ConfigMap", "tiny-profile", "default")
    assert cm is not None and json.loads(cm["data"]["profile.json"]) == json.loads(out.read_text())
