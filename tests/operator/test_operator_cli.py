"""`moeplane operator`: its flags, and peering with other replicas instead of `--standalone`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from moeplane.cli import build_parser
from tests.kube.cluster import EmulatedCluster
from tests.kube.kuberay import KubeRayDriver

ROOT = Path(__file__).resolve().parents[2]
MOEPLANE = str(Path(sys.executable).parent / "moeplane")

PEERING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {
        "group": "kopf.dev",
        "scope": "Namespaced",
        "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


@pytest.mark.unit
def test_flags_parse() -> None:
    args = build_parser().parse_args(
        [
            "operator",
            "-n",
            "team-a",
            "-n",
            "team-b",
            "--peering",
            "moeplane",
            "--redis-url",
            "redis://r:6379/0",
            "--resync-seconds",
            "10",
        ]
    )
    assert (
        args.namespaces == ["team-a", "team-b"] and args.peering == "moeplane" and args.resync_seconds == 10
    )


@pytest.mark.integration
def test_bad_settings_exit_with_a_clear_message() -> None:
    proc = subprocess.run(
        [MOEPLANE, "operator", "--resync-seconds", "0"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "--resync-seconds must be positive (got 0.0)" in proc.stderr


@pytest.mark.integration
def test_peering_mode_coordinates_through_a_kopfpeering(
    kube_crds: EmulatedCluster, kuberay: KubeRayDriver, start_operator: Any
) -> None:
    cluster = kube_crds
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(PEERING_CRD))
    cluster.apply_object(
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "KopfPeering",
            "metadata": {"name": "moeplane", "namespace": "default"},
        }
    )
    with start_operator(standalone=False, peering_name="moeplane"):
        peers = cluster.wait_for(
            lambda: cluster.get("kopf.dev/v1", "KopfPeering", "moeplane").get("status"),
            what="the operator to announce itself in the KopfPeering",
        )
        assert len(peers) == 1
        cluster.kubectl("apply", "-f", str(ROOT / "examples" / "tiny-cpu.yaml"))
        cluster.wait_for(lambda: len(kuberay.rayclusters("default")) == 2, what="RayClusters under peering")
