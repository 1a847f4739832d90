"""`moeplane validate`, `plan` and `crds` as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from moeplane.cli import main
from tests.example_manifests import EXAMPLE_FILES, LOCAL_CHECKPOINT, PLACEHOLDER, write_example

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def test_validate_accepts_every_example(capsys, tmp_path: Path, hf_checkpoint) -> None:
    # local-checkpoint.yaml with its placeholder replaced by a checkpoint directory, as a user's.
    files = [str(write_example(p, hf_checkpoint("deepseek-v3"), tmp_path)) for p in EXAMPLE_FILES]
    assert main(["validate", "-f", *files]) == 0
    out = capsys.readouterr().out
    assert out.count(" is valid") == len(files)
    # As shipped, it names the placeholder, and validation says there is no checkpoint there.
    assert main(["validate", "-f", str(LOCAL_CHECKPOINT)]) == 1
    assert f"spec.model.weights.uri: {PLACEHOLDER} has no readable config.json" in capsys.readouterr().out


def test_validate_rejects_ep40_naming_the_field_and_numbers(tmp_path: Path, capsys) -> None:
    manifest = yaml.safe_load((EXAMPLES / "deepseek-r1.yaml").read_text())
    manifest["spec"]["decode"]["expertParallel"] = 40
    manifest["spec"]["sla"]["itlMs"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(manifest))
    assert main(["validate", "-f", str(bad), str(EXAMPLES / "tiny-cpu.yaml")]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: invalid (1 problem)" in out
    assert "spec.sla.itlMs: must be greater than 0 (got 0)" in out
    manifest["spec"]["sla"]["itlMs"] = 50
    bad.write_text(yaml.safe_dump(manifest))
    assert main(["validate", "-f", str(bad)]) == 1
    assert ("spec.decode.expertParallel: 256 routed + 32 redundant experts = 288 slots per layer, "
            "not divisible by expertParallel 40") in capsys.readouterr().out


def test_validate_reports_unreadable_and_foreign_documents(tmp_path: Path, capsys) -> None:
    multi = tmp_path / "multi.yaml"
    multi.write_text((EXAMPLES / "tiny-cpu.yaml").read_text() + "---\nkind: Pod\n---\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    assert main(["validate", "-f", str(multi), str(broken), str(tmp_path / "missing.yaml")]) == 1
    out = capsys.readouterr().out
    assert f"{multi}#0: MoEDeployment/tiny is valid" in out
    assert f"{multi}#1: invalid (1 problem)\n  - kind: must be MoEDeployment or MoEPool (got 'Pod')" in out
    assert f"{broken}: invalid" in out and "not valid YAML" in out
    assert "No such file or directory" in out


def test_plan_table_and_json(capsys) -> None:
    r1 = str(EXAMPLES / "deepseek-r1.yaml")
    assert main(["plan", "-f", r1]) == 0
    lines = capsys.readouterr().out.splitlines()
    prefill = next(line.split() for line in lines if line.startswith("prefill"))
    decode = next(line.split() for line in lines if line.startswith("decode"))
    # pool groups EP nodes/group GPUs/group routed shared ...
    assert prefill[:7] == ["prefill", "1", "32", "4", "32", "9", "1"]
    assert decode[:7] == ["decode", "1", "144", "18", "144", "2", "1"]
    assert main(["plan", "-f", r1, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    keys = ("nodes_per_group", "gpus_per_group", "routed_experts_per_gpu", "shared_experts_per_gpu")
    assert [plan["prefill"][k] for k in keys] == [4, 32, 9, 1]
    assert [plan["decode"][k] for k in keys] == [18, 144, 2, 1]
    assert plan["prefill"]["weight_bytes_per_gpu"] > plan["decode"]["weight_bytes_per_gpu"] > 0
    assert plan["decode"]["kv_tokens_per_gpu"] > plan["prefill"]["kv_tokens_per_gpu"] > 0
    assert plan["total_gpus"] == 176


def test_crds_check_detects_drift_and_regenerates(tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "crds"
    assert main(["crds", "--check", "--out-dir", str(out_dir)]) == 1
    assert main(["crds", "--out-dir", str(out_dir)]) == 0
    assert main(["crds", "--check", "--out-dir", str(out_dir)]) == 0
    for name in ("moedeployment.yaml", "moepool.yaml"):
        assert (out_dir / name).read_text() == (ROOT / "crds" / name).read_text()
    (out_dir / "moepool.yaml").write_text("# edited\n")
    assert main(["crds", "--check", "--out-dir", str(out_dir)]) == 1
    assert "moepool.yaml is stale" in capsys.readouterr().out


def test_console_script_exit_status() -> None:
    exe = shutil.which("moeplane", path=str(ROOT / ".venv" / "bin"))
    assert exe, "the moeplane console script is not installed in .venv"
    done = subprocess.run([exe, "plan", "-f", str(EXAMPLES / "tiny-cpu.yaml"), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decode"]["gpus_per_group"] == 2
