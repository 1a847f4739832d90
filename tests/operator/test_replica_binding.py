"""Worker pods tell Ray which KubeRay replica group (and host) they are, and the RayCluster names the
drained groups' pods in scaleStrategy.workersToDelete; neither changes the revision."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from moeplane.api import podcontract as pc
from moeplane.api.enums import Role
from moeplane.api.runtime import resolve_runtime
from moeplane.api.spec import parse_deployment, parse_pool
from moeplane.operator.builders.pools import build_pool
from moeplane.operator.builders.raycluster import build_raycluster

from tests.kube.podrunner.podspec import expand
from tests.operator.test_operator_pods import CONFIG, container, env, manifest, pods

pytestmark = pytest.mark.unit


def test_worker_pods_label_their_ray_node_with_the_replica_index() -> None:
    _, _, worker, _ = pods(manifest("tiny-cpu.yaml"), Role.DECODE)
    values = env(container(worker, "ray-worker"))
    assert values[pc.REPLICA_INDEX_ENV] == {
        "fieldRef": {"fieldPath": f"metadata.labels['{pc.RAY_REPLICA_INDEX_LABEL}']"}
    }
    labels = json.loads(values[pc.RAY_LABELS_ENV])
    assert labels == {pc.NODE_REPLICA_LABEL: f"$({pc.REPLICA_INDEX_ENV})"}  # one host per group here
    # Kubernetes expands it from the downward-API variable before it (as the pod runner does).
    assert json.loads(expand(values[pc.RAY_LABELS_ENV], {pc.REPLICA_INDEX_ENV: "3"})) == {
        pc.NODE_REPLICA_LABEL: "3"
    }


def test_multi_host_groups_label_the_host_index_too() -> None:
    _, _, worker, _ = pods(manifest("deepseek-r1.yaml"), Role.DECODE)
    values = env(container(worker, "ray-worker"))
    assert values[pc.HOST_INDEX_ENV] == {
        "fieldRef": {"fieldPath": f"metadata.labels['{pc.RAY_HOST_INDEX_LABEL}']"}
    }
    assert json.loads(values[pc.RAY_LABELS_ENV])[pc.NODE_HOST_LABEL] == f"$({pc.HOST_INDEX_ENV})"


def test_ray_start_reads_the_labels() -> None:
    """`ray start` (Ray's own ResourceAndLabelSpec) takes RAY_OVERRIDE_LABELS as node labels."""
    code = (
        "import os, json\n"
        "from ray._private.resource_and_label_spec import ResourceAndLabelSpec\n"
        "print(json.dumps(ResourceAndLabelSpec._load_env_labels()))\n"
    )
    labels = json.dumps({pc.NODE_REPLICA_LABEL: "2"})
    out = subprocess.run(
        [sys.executable, "-c", code], env={pc.RAY_LABELS_ENV: labels}, capture_output=True, text=True,
        check=True, timeout=120,
    )  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {pc.NODE_REPLICA_LABEL: "2"}


def test_workers_to_delete_and_replicas_leave_the_revision_alone() -> None:
    dep = parse_deployment(manifest("tiny-cpu.yaml"))
    pool = build_pool(dep, "tiny", "default", Role.DECODE, resolve_runtime(dep).pool(Role.DECODE), 2)
    spec = parse_pool(pool).spec
    plain = build_raycluster(spec, "tiny-decode", "default", spec.layout.gpu, CONFIG)
    scaled = build_raycluster(spec, "tiny-decode", "default", spec.layout.gpu, CONFIG, 1, ("w-abc",))
    assert plain["metadata"]["name"] == scaled["metadata"]["name"]
    group = scaled["spec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 1 and group["scaleStrategy"] == {"workersToDelete": ["w-abc"]}
    assert "scaleStrategy" not in plain["spec"]["workerGroupSpecs"][0]


def test_the_rollout_surge_reaches_the_pools() -> None:
    dep = parse_deployment(manifest("tiny-cpu.yaml", rollout={"maxSurgeGroups": 2}))
    pool = build_pool(dep, "tiny", "default", Role.DECODE, resolve_runtime(dep).pool(Role.DECODE), 1)
    assert parse_pool(pool).spec.rollout.max_surge_groups == 2
