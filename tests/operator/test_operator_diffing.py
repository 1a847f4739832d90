"""Desired vs live, and status from observation: create, patch only what differs, or nothing."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest
from moeplane.api.enums import Role
from moeplane.operator.diffing import (
    DEFAULT_POLICY,
    ChildPolicy,
    Create,
    Patch,
    merge_diff,
    plan_child,
    with_hash,
)
from moeplane.operator.kinds import CONFIGMAP, RAYCLUSTER, SERVICE
from moeplane.operator.observe import observe_pool
from moeplane.operator.reconcile import RAYCLUSTER_POLICY, retired
from moeplane.operator.status import PoolSummary, deployment_status, pool_status, status_patch

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s", "namespace": "ns", "labels": {"a": "b"}},
        "spec": {"clusterIP": "None", "ports": [{"name": "g", "port": 1}]},
    }


def stored(desired: dict[str, Any], policy: ChildPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """What the API server holds after creating `desired`, with fields the server defaulted."""
    live = copy.deepcopy(with_hash(desired, policy.unhashed))
    live["metadata"].update(
        uid="u1", resourceVersion="7", labels={**live["metadata"].get("labels", {}), "other": "x"}
    )
    return live


def test_missing_child_is_created_with_its_hash() -> None:
    action = plan_child(SERVICE, service(), None)
    assert isinstance(action, Create) and "moeplane.io/desired-hash" in action.body["metadata"]["annotations"]


def test_unchanged_child_needs_no_write_despite_server_defaults() -> None:
    live = stored(service())
    live["spec"]["ports"][0]["protocol"] = "TCP"  # the server defaults list items
    live["spec"]["sessionAffinity"] = "None"
    assert plan_child(SERVICE, service(), live) is None


def test_changed_child_is_patched_with_only_the_differences() -> None:
    live = stored(service())
    desired = service()
    desired["metadata"]["labels"]["a"] = "c"
    action = plan_child(SERVICE, desired, live)
    assert isinstance(action, Patch)
    assert action.patch["metadata"]["labels"] == {"a": "c"}  # not the server's "other" label
    assert "spec" not in action.patch


def test_owned_subtrees_are_pruned() -> None:
    desired = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "ns"},
        "data": {"keep": "1"},
    }
    live = stored({**desired, "data": {"keep": "1", "gone": "2"}})
    action = plan_child(CONFIGMAP, desired, live, ChildPolicy(prune=(("data",),)))
    assert isinstance(action, Patch) and action.patch["data"] == {"gone": None}


def test_replicas_drift_is_repaired_without_a_hash_change() -> None:
    desired = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {"workerGroupSpecs": [{"groupName": "decode", "replicas": 2, "template": {}}]},
    }
    live = stored(desired, RAYCLUSTER_POLICY)
    assert plan_child(RAYCLUSTER, desired, live, RAYCLUSTER_POLICY) is None
    live["spec"]["workerGroupSpecs"][0]["replicas"] = 5  # someone edited it by hand
    action = plan_child(RAYCLUSTER, desired, live, RAYCLUSTER_POLICY)
    assert isinstance(action, Patch) and action.patch == {
        "spec": {"workerGroupSpecs": desired["spec"]["workerGroupSpecs"]}
    }
    scaled = copy.deepcopy(desired)
    scaled["spec"]["workerGroupSpecs"][0]["replicas"] = 3  # a scale keeps the hash: only replicas move
    action = plan_child(RAYCLUSTER, scaled, stored(desired, RAYCLUSTER_POLICY), RAYCLUSTER_POLICY)
    assert isinstance(action, Patch) and list(action.patch) == ["spec"]


def test_merge_diff_is_empty_for_equal_objects() -> None:
    assert merge_diff(service(), service()) == {}


def rc(name: str, replicas: int, hosts: int, ready_pods: int, head: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": name, "labels": {"moeplane.io/revision": name}},
        "spec": {"workerGroupSpecs": [{"replicas": replicas, "numOfHosts": hosts}]},
        "status": {
            "readyWorkerReplicas": ready_pods,
            "conditions": [{"type": "HeadPodReady", "status": "True" if head else "False"}],
        },
    }


def test_ready_groups_count_whole_multi_host_groups() -> None:
    obs = observe_pool(2, "new", [rc("new", 2, 18, 35)])
    assert obs.ready_groups == 1 and not obs.ready  # 35 pods: one whole group of 18, not two
    assert observe_pool(2, "new", [rc("new", 2, 18, 36, head=False)]).ready_groups == 0


def test_rollout_keeps_old_revisions_until_the_new_one_serves() -> None:
    rolling = observe_pool(1, "new", [rc("old", 1, 4, 4), rc("new", 1, 4, 0)])
    assert retired(rolling) == [] and rolling.ready_groups == 1  # capacity held by the old one
    done = observe_pool(1, "new", [rc("old", 1, 4, 4), rc("new", 1, 4, 4)])
    assert [o.name for o in retired(done)] == ["old"]
    stale = observe_pool(1, "new", [rc("older", 1, 4, 0), rc("old", 1, 4, 4), rc("new", 1, 4, 0)])
    assert [o.name for o in retired(stale)] == ["older"]  # never served: no reason to wait


def test_status_is_rewritten_only_when_it_changed() -> None:
    obs = observe_pool(1, "new", [rc("new", 1, 4, 4)])
    first = pool_status(obs, "sel", 3, None, NOW)
    later = NOW + datetime.timedelta(minutes=5)
    again = pool_status(obs, "sel", 3, first, later)
    assert status_patch(first, again) is None  # same observation: same status, same times
    assert first["conditions"][0]["type"] == "Ready" and first["conditions"][0]["status"] == "True"
    degraded = pool_status(observe_pool(1, "new", [rc("new", 1, 4, 0)]), "sel", 3, first, later)
    patch = status_patch(first, degraded)
    assert patch is not None and patch["status"]["readyGroups"] == 0


def test_deployment_status_sums_pools() -> None:
    pools = [
        PoolSummary(Role.PREFILL, 1, 1, 4, True, False, None, 32),
        PoolSummary(Role.DECODE, 2, 1, 18, False, True, None, 144),
    ]
    status = deployment_status(pools, 2, None, NOW)
    ready = status["conditions"][0]
    assert ready["status"] == "False" and "decode 1/2" in ready["message"]
    assert status["totalGpus"] == 32 + 288 and status["decode"]["readyGroups"] == 1
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded", "Invalid"}
    # Fields others own (the planner's lastDecision) are never part of the patch.
    assert "lastDecision" not in (status_patch({"lastDecision": {"x": 1}}, status) or {})["status"]
