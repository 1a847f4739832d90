# ruff: noqa: E501
"""Status read the way KubeRay writes it and written from the typed models: head readiness from the
HeadPodReady condition only, KubeRay's ReplicaFailure in Degraded with its reason and message,
suspended RayClusters, the EPLB store's placement version and balancedness, and a hand-made MoEPool
refused. RayCluster statuses are built here with KubeRay's real condition names
(ray-operator/apis/ray/v1/raycluster_types.go)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from moeplane.api.enums import Role
from moeplane.api.spec import MoEPoolStatus
from moeplane.api.status import MoEDeploymentStatus
from moeplane.operator.eplb_status import parse_reading
from moeplane.operator.observe import RayClusterCondition, observe_pool, observe_raycluster
from moeplane.operator.status import EplbReading, PoolSummary, deployment_status, pool_status

from tests.kube.cluster import EmulatedCluster
from tests.kube.kuberay import KubeRayDriver

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
POOL = ("moeplane.io/v1alpha1", "MoEPool")
MOED = ("moeplane.io/v1alpha1", "MoEDeployment")


def cond(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": "2026-01-01T00:00:00Z"}


def raycluster(status: dict[str, Any], replicas: int = 2, hosts: int = 2, name: str = "p-abc") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": "u", "labels": {"moeplane.io/revision": "abc"}},
        "spec": {"workerGroupSpecs": [{"replicas": replicas, "numOfHosts": hosts}]},
        "status": status,
    }


HEAD_READY = cond("HeadPodReady", "True", "HeadPodRunningAndReady")


@pytest.mark.unit
def test_the_condition_names_are_kuberays() -> None:
    assert {c.value for c in RayClusterCondition} == {
        "RayClusterProvisioned", "HeadPodReady", "ReplicaFailure", "RayClusterSuspending", "RayClusterSuspended",
    }  # fmt: skip


@pytest.mark.unit
def test_head_readiness_comes_from_head_pod_ready_only() -> None:
    # KubeRay set `state: ready` once and never clears it: a head that went away is not ready.
    gone = raycluster({"state": "ready", "readyWorkerReplicas": 4, "conditions": [cond("HeadPodReady", "False", "HeadPodNotFound")]})
    assert observe_raycluster(gone).ready_groups == 0
    up = raycluster({"readyWorkerReplicas": 4, "conditions": [HEAD_READY]})
    assert observe_raycluster(up).ready_groups == 2
    half = raycluster({"readyWorkerReplicas": 3, "conditions": [HEAD_READY]})
    assert observe_raycluster(half).ready_groups == 1  # whole multi-host groups only
    assert observe_raycluster(raycluster({"state": "ready", "readyWorkerReplicas": 4})).ready_groups == 0


@pytest.mark.unit
def test_replica_failure_reaches_degraded_with_reason_and_message() -> None:
    quota = 'pods "p-abc-decode-worker-x" is forbidden: exceeded quota: gpus, requested: nvidia.com/gpu=8'
    rc = raycluster({"readyWorkerReplicas": 2, "conditions": [HEAD_READY, cond("ReplicaFailure", "True", "FailedCreateWorkerPod", quota)]})
    obs = observe_pool(2, "p-abc", [rc])
    assert obs.failure == f"RayCluster p-abc: FailedCreateWorkerPod: {quota}"
    pool = MoEPoolStatus.model_validate(pool_status(obs, "sel", 3, None, NOW))
    degraded = next(c for c in pool.conditions if c.type.value == "Degraded")
    assert degraded.status.value == "True" and degraded.reason == "ReplicaFailure" and quota in degraded.message
    summary = PoolSummary(Role.DECODE, 2, obs.ready_groups, obs.ready_workers, obs.ready, False, obs.failure, 16)
    dep = MoEDeploymentStatus.model_validate(deployment_status([summary], 3, None, NOW))
    degraded_dep = dep.condition(degraded.type)
    assert degraded_dep is not None and degraded_dep.message == f"decode: RayCluster p-abc: FailedCreateWorkerPod: {quota}"
    # Cleared by KubeRay once pods are created again: Healthy.
    ok = raycluster({"readyWorkerReplicas": 4, "conditions": [HEAD_READY]})
    pool = MoEPoolStatus.model_validate(pool_status(observe_pool(2, "p-abc", [ok]), "sel", 3, None, NOW))
    assert next(c for c in pool.conditions if c.type.value == "Degraded").status.value == "False"


@pytest.mark.unit
def test_a_suspended_raycluster_says_it_waits_for_admission() -> None:
    rc = raycluster({"conditions": [cond("RayClusterSuspended", "True", "RayClusterSuspended")]})
    pool = MoEPoolStatus.model_validate(pool_status(observe_pool(2, "p-abc", [rc]), "sel", 1, None, NOW))
    ready = next(c for c in pool.conditions if c.type.value == "Ready")
    assert ready.reason == "Suspended" and "admission" in ready.message


@pytest.mark.unit
def test_status_is_the_typed_models_wire_form_and_counts_groups() -> None:
    rc = raycluster({"readyWorkerReplicas": 4, "conditions": [HEAD_READY]})
    obs = observe_pool(2, "p-abc", [rc])
    wire = pool_status(obs, "sel", 1, None, NOW, EplbReading(7, 0.93))
    assert wire == MoEPoolStatus.model_validate(wire).to_wire()
    assert {k: wire[k] for k in ("replicas", "readyGroups", "readyWorkers", "placementVersion", "balancedness")} == {
        "replicas": 2, "readyGroups": 2, "readyWorkers": 4, "placementVersion": 7, "balancedness": 0.93,
    }  # fmt: skip
    summary = PoolSummary(Role.PREFILL, 2, 2, 4, True, False, None, 8, EplbReading(7, 0.93))
    dep = deployment_status([summary], 1, None, NOW)
    assert dep["prefill"] == {"desiredGroups": 2, "readyGroups": 2, "readyWorkers": 4, "placementVersion": 7, "balancedness": 0.93}
    # Nothing read from Redis: the fields are left out, so a merge patch keeps what was there.
    assert "placementVersion" not in pool_status(obs, "sel", 1, None, NOW)


@pytest.mark.unit
@pytest.mark.parametrize(
    "version,balance,expected",
    [(b"3", b"0.5", EplbReading(3, 0.5)), (None, None, EplbReading()), (b"x", b"2.0", EplbReading()), ("4", "nan", EplbReading(4, None))],
)
def test_eplb_hash_fields_parse(version: Any, balance: Any, expected: EplbReading) -> None:
    assert parse_reading(version, balance) == expected


@pytest.mark.unit
def test_importing_the_operator_imports_no_torch() -> None:
    code = (
        "import sys; import moeplane.operator.handlers, moeplane.operator.runner, moeplane.operator.cli, "
        "moeplane.operator.cleanup_cli, moeplane.operator.eplb_status, moeplane.hfcache; "
        "bad = sorted(m for m in ('torch', 'ray', 'moeplane.workers') if m in sys.modules); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ---- against the emulated API server ----------------------------------------------------------------
def _set_rc_status(cluster: EmulatedCluster, name: str, status: dict[str, Any]) -> None:
    def run(store: Any) -> None:
        d = store.registry.resolve("ray.io", "v1", "rayclusters")
        store.patch(d, "default", name, "application/merge-patch+json", {"status": status}, subresource="status")

    cluster.call(run)


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


@pytest.mark.integration
def test_replica_failure_and_eplb_state_reach_status(
    kube_crds: EmulatedCluster, kuberay: KubeRayDriver, start_operator: Any, redis_server: Any
) -> None:
    import redis
    import torch
    from moeplane.workers.eplb.store import EplbStore
    from moeplane.workers.placement import Placement

    from moeplane.bus.keys import DeploymentKeys

    cluster = kube_crds
    body = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    client = redis.Redis.from_url(redis_server.url)
    keys = DeploymentKeys("default", "tiny")
    with start_operator(redis_url=redis_server.url):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        rcs = cluster.wait_for(lambda: kuberay.rayclusters("default") if len(kuberay.rayclusters("default")) == 2 else None, what="two RayClusters")
        decode = next(rc["metadata"]["name"] for rc in rcs if rc["metadata"]["labels"]["moeplane.io/role"] == "decode")
        message = 'pods "x" is forbidden: exceeded quota: compute-resources'
        _set_rc_status(cluster, decode, {
            "readyWorkerReplicas": 0,
            "conditions": [HEAD_READY, cond("ReplicaFailure", "True", "FailedCreateWorkerPod", message)],
        })  # fmt: skip
        cluster.wait_for(
            lambda: message in _condition(cluster.find(*MOED, "tiny"), "Degraded").get("message", ""),
            what="the ReplicaFailure in the deployment's Degraded condition",
        )
        pool = cluster.get(*POOL, "tiny-decode")
        assert _condition(pool, "Degraded")["status"] == "True" and "FailedCreateWorkerPod" in _condition(pool, "Degraded")["message"]

        # The EPLB store's state (written by the workers' own store) reaches both statuses.
        arch_slots = 8
        store = EplbStore(client, keys, Role.DECODE)
        placement = Placement.identity(2, 8, arch_slots)
        store.publish_placement(Placement.from_phy2log(placement.phy2log, 8, version=5))
        store.publish_status(0.875, placement_version=5)
        kuberay.mark_all_ready()
        cluster.wait_for(
            lambda: (cluster.get(*MOED, "tiny").get("status") or {}).get("decode", {}).get("placementVersion") == 5,
            what="the placement version in the deployment's status",
        )
        assert cluster.get(*MOED, "tiny")["status"]["decode"]["balancedness"] == 0.875
        assert cluster.get(*POOL, "tiny-decode")["status"]["placementVersion"] == 5
        assert _condition(cluster.find(*MOED, "tiny"), "Degraded")["status"] == "False"
        del torch
    client.delete(keys.placement("decode"))


@pytest.mark.integration
def test_a_moepool_made_by_hand_is_refused_with_an_event(
    kube_crds: EmulatedCluster, kuberay: KubeRayDriver, start_operator: Any
) -> None:
    from moeplane.api.runtime import resolve_runtime
    from moeplane.api.spec import parse_deployment
    from moeplane.operator.builders.pools import build_pool

    cluster = kube_crds
    deployment = parse_deployment(yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text()))
    layout = resolve_runtime(deployment).pool(Role.DECODE)
    pool = build_pool(deployment, "tiny", "default", Role.DECODE, layout, replicas=1)
    pool["metadata"]["name"] = "by-hand"
    with start_operator():
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pool))
        invalid = cluster.wait_for(
            lambda: _condition(cluster.find(*POOL, "by-hand"), "Invalid") or None, what="the pool refused"
        )
        assert invalid["status"] == "True" and invalid["reason"] == "NotOwnedByDeployment"
        assert "not owned by MoEDeployment 'tiny'" in invalid["message"]
        events = cluster.wait_for(
            lambda: [e for e in cluster.list("v1", "Event", "default") if e.get("reason") == "NotOwnedByDeployment"],
            what="a Warning Event",
        )
        assert events[0]["type"] == "Warning" and events[0]["message"] == invalid["message"]
        assert events[0]["involvedObject"]["name"] == "by-hand"
        # Nothing is run for it: no RayCluster, no Service.
        assert kuberay.rayclusters("default") == []
        assert cluster.find("v1", "Service", "by-hand-workers") is None
