"""The operator against the emulated API server: children, status, scaling, rollout, invalid specs,
deletion. The operator runs in-process; `kubectl` plays the user and the driver plays KubeRay."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from moeplane.api.errors import SpecInvalid
from moeplane.api.spec import parse_deployment
from moeplane.operator.kinds import MOEPOOL

from moeplane.bus.keys import DeploymentKeys
from tests.kube.cluster import EmulatedCluster
from tests.kube.kuberay import KubeRayDriver
from tests.operator.harness import RunningOperator

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MOED = ("moeplane.io/v1alpha1", "MoEDeployment")
POOL = ("moeplane.io/v1alpha1", "MoEPool")
RC = ("ray.io/v1", "RayCluster")


def manifest(example: str = "deepseek-r1.yaml", name: str | None = None) -> dict[str, Any]:
    body = yaml.safe_load((EXAMPLES / example).read_text())
    if name:
        body["metadata"]["name"] = name
    return body


def apply(cluster: EmulatedCluster, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def is_ready(cluster: EmulatedCluster, name: str) -> bool:
    return condition(cluster.find(*MOED, name), "Ready").get("status") == "True"


def owned_names(cluster: EmulatedCluster) -> dict[str, list[str]]:
    kinds = {
        "pools": POOL,
        "rayclusters": RC,
        "configmaps": ("v1", "ConfigMap"),
        "services": ("v1", "Service"),
        "deployments": ("apps/v1", "Deployment"),
        "secrets": ("v1", "Secret"),
    }
    return {
        key: sorted(o["metadata"]["name"] for o in cluster.list(*kind, "default"))
        for key, kind in kinds.items()
    }


# ---- waiting on the operator's own progress, never on the clock ------------------------------------
# "Several resyncs later" is counted in reconciles the operator ran (its counters), so a slow machine
# only makes the waits longer, never the assertions weaker. The deadlines are generous bounds.
WAIT_S = 90.0
WRITES = ("create", "update", "patch", "delete", "deletecollection")


def reconciled(operator: RunningOperator) -> tuple[int, int]:
    """(MoEDeployment reconciles, MoEPool reconciles) the operator has run so far."""
    counts = operator.state.counters.reconciles
    return counts["moedeployments"], counts["moepools"]


def wait_resyncs(cluster: EmulatedCluster, operator: RunningOperator, rounds: int, pools: int = 2) -> None:
    """Until the deployment has been reconciled `rounds` more times (its resync timer reconciles it
    once per interval, and a valid deployment's reconcile reconciles each of its `pools`)."""
    d0, p0 = reconciled(operator)

    def done() -> bool:
        d, p = reconciled(operator)
        return d - d0 >= rounds and p - p0 >= rounds * pools

    cluster.wait_for(done, timeout_s=WAIT_S, what=f"{rounds} more resync rounds")


def wait_quiet(cluster: EmulatedCluster, operator: RunningOperator, rounds: int = 2, pools: int = 2) -> None:
    """Until `rounds` resync rounds have run since the operator's last write: in-flight handler
    retries, status updates and Events have settled."""
    mark: dict[str, Any] = {"writes": -1, "at": (0, 0)}

    def quiet() -> bool:
        writes = cluster.request_count("operator", writes_only=True)
        now = reconciled(operator)
        if writes != mark["writes"]:
            mark["writes"], mark["at"] = writes, now
            return False
        return now[0] - mark["at"][0] >= rounds and now[1] - mark["at"][1] >= rounds * pools

    cluster.wait_for(quiet, timeout_s=WAIT_S, what=f"{rounds} resync rounds without a write")


def pool_snapshot(
    cluster: EmulatedCluster, operator: RunningOperator, pools: list[str]
) -> tuple[int, dict[str, int]] | None:
    """(MoEPool reconciles, the operator's requests per verb) as of one instant at which no pool
    reconcile was in flight, or None when one was. A reconcile holds its pool's lock from its count
    to its last request, so counts read around an instant with every lock free agree."""
    first = reconciled(operator)[1], cluster.verb_counts("operator")
    idle = not any(operator.state.locks(MOEPOOL, "default", pool).locked() for pool in pools)
    second = reconciled(operator)[1], cluster.verb_counts("operator")
    return first if idle and first == second else None


def idle_snapshot(
    cluster: EmulatedCluster, operator: RunningOperator, pools: list[str]
) -> tuple[int, dict[str, int]]:
    taken = cluster.wait_for(
        lambda: pool_snapshot(cluster, operator, pools), timeout_s=WAIT_S, what="no pool reconcile in flight"
    )
    assert taken is not None
    return taken


def test_children_status_and_a_resync_that_writes_nothing(
    kube_crds: EmulatedCluster, kuberay: KubeRayDriver, start_operator: Any
) -> None:
    cluster = kube_crds
    with start_operator() as operator:
        apply(cluster, manifest())
        cluster.wait_for(lambda: len(kuberay.rayclusters("default")) == 2, what="two RayClusters")
        children = owned_names(cluster)
        assert children["pools"] == ["deepseek-r1-decode", "deepseek-r1-prefill"]
        assert children["configmaps"] == ["deepseek-r1-engine"]  # the pools' layouts are theirs
        assert children["services"] == [
            "deepseek-r1-decode-workers",
            "deepseek-r1-frontend",
            "deepseek-r1-prefill-workers",
        ]
        assert children["deployments"] == ["deepseek-r1-frontend"]
        assert children["secrets"] == ["deepseek-r1-secret"]
        secret = cluster.get("v1", "Secret", "deepseek-r1-secret")
        assert secret["metadata"]["ownerReferences"][0]["kind"] == "MoEDeployment"
        token = secret["data"]["grpc-token"]
        # Pods reference the token; no pod spec holds it.
        readable = [
            *kuberay.rayclusters("default"),
            cluster.get("apps/v1", "Deployment", "deepseek-r1-frontend"),
        ]
        assert all(token not in json.dumps(obj) for obj in readable)
        hosts = {
            rc["metadata"]["name"].rsplit("-", 1)[0]: rc["spec"]["workerGroupSpecs"][0]["numOfHosts"]
            for rc in kuberay.rayclusters("default")
        }
        assert hosts == {"deepseek-r1-decode": 18, "deepseek-r1-prefill": 4}
        for rc in kuberay.rayclusters("default"):
            owner = rc["metadata"]["ownerReferences"][0]
            assert owner["kind"] == "MoEPool" and owner["controller"] is True

        cluster.wait_for(
            lambda: condition(cluster.find(*MOED, "deepseek-r1"), "Progressing").get("status") == "True",
            what="Progressing while RayClusters start",
        )
        assert not is_ready(cluster, "deepseek-r1")
        kuberay.mark_all_ready()
        cluster.wait_for(lambda: is_ready(cluster, "deepseek-r1"), what="Ready after KubeRay reports ready")
        status = cluster.get(*MOED, "deepseek-r1")["status"]
        assert status["decode"] == {"desiredGroups": 1, "readyGroups": 1, "readyWorkers": 18}
        assert status["totalGpus"] == 32 + 144 and status["observedGeneration"] == 1
        decode_pool = cluster.get(*POOL, "deepseek-r1-decode")
        assert decode_pool["status"]["readyGroups"] == 1
        assert "finalizers" not in decode_pool["metadata"]  # only the deployment's Redis keys need one

        # Let in-flight handler retries settle, then count: several resyncs must write nothing.
        wait_quiet(cluster, operator)
        pools = children["pools"]
        pool_reconciles, before = idle_snapshot(cluster, operator, pools)
        wait_resyncs(cluster, operator, rounds=3)
        ran, after = idle_snapshot(cluster, operator, pools)
        ran -= pool_reconciles
        delta = {verb: n - before.get(verb, 0) for verb, n in after.items() if n != before.get(verb, 0)}
        assert not {verb: n for verb, n in delta.items() if verb in WRITES}, delta
        # Children come from the watch cache; only each pool's RayClusters are listed fresh.
        assert ran >= 3 * 2 and delta == {"list": ran}
        # Resyncs never rotate the token.
        assert cluster.get("v1", "Secret", "deepseek-r1-secret")["data"]["grpc-token"] == token


def test_scale_and_sla_changes(
    kube_crds: EmulatedCluster, kuberay: KubeRayDriver, start_operator: Any
) -> None:
    cluster = kube_crds
    kuberay.auto()
    with start_operator() as operator:
        apply(cluster, manifest())
        cluster.wait_for(lambda: is_ready(cluster, "deepseek-r1"), what="Ready")
        decode_rc = next(rc for rc in kuberay.rayclusters("default") if "decode" in rc["metadata"]["name"])

        cluster.kubectl("scale", "moepool/deepseek-r1-decode", "--replicas=2")

        def replicas() -> int:
            return int(
                cluster.get(*RC, decode_rc["metadata"]["name"])["spec"]["workerGroupSpecs"][0]["replicas"]
            )

        cluster.wait_for(lambda: replicas() == 2, what="the RayCluster scaled to 2 groups")
        cluster.wait_for(
            lambda: cluster.get(*MOED, "deepseek-r1")["status"]["decode"]["readyGroups"] == 2,
            what="two decode groups ready",
        )
        wait_resyncs(cluster, operator, rounds=2)  # resyncs of the deployment must not undo the scale
        assert replicas() == 2 and cluster.get(*POOL, "deepseek-r1-decode")["spec"]["replicas"] == 2

        before = {
            rc["metadata"]["name"]: rc["metadata"]["resourceVersion"] for rc in kuberay.rayclusters("default")
        }
        engine = cluster.get("v1", "ConfigMap", "deepseek-r1-engine")["metadata"]["resourceVersion"]
        cluster.kubectl(
            "patch",
            "moed",
            "deepseek-r1",
            "--type",
            "merge",
            "-p",
            json.dumps({"spec": {"sla": {"ttftMs": 800, "itlMs": 30}, "planner": {"predictor": "ema"}}}),
        )
        cluster.wait_for(
            lambda: cluster.get(*MOED, "deepseek-r1")["status"]["observedGeneration"] == 2,
            what="the SLA change observed",
        )
        wait_resyncs(cluster, operator, rounds=2)
        after = {
            rc["metadata"]["name"]: rc["metadata"]["resourceVersion"] for rc in kuberay.rayclusters("default")
        }
        assert after == before  # same RayClusters, untouched: no worker restarts
        assert cluster.get("v1", "ConfigMap", "deepseek-r1-engine")["metadata"]["resourceVersion"] == engine


def test_layout_change_rolls_new_groups_before_removing_old(
    kube_crds: EmulatedCluster, kuberay: KubeRayDriver, start_operator: Any
) -> None:
    cluster = kube_crds
    with start_operator() as operator:
        apply(cluster, manifest())
        cluster.wait_for(lambda: len(kuberay.rayclusters("default")) == 2, what="two RayClusters")
        kuberay.mark_all_ready()
        cluster.wait_for(lambda: is_ready(cluster, "deepseek-r1"), what="Ready")
        old = next(
            rc["metadata"]["name"]
            for rc in kuberay.rayclusters("default")
            if "decode" in rc["metadata"]["name"]
        )

        cluster.kubectl(
            "patch",
            "moed",
            "deepseek-r1",
            "--type",
            "merge",
            "-p",
            json.dumps({"spec": {"decode": {"expertParallel": 72}}}),
        )

        def decode() -> list[str]:
            return sorted(
                rc["metadata"]["name"]
                for rc in kuberay.rayclusters("default")
                if "decode" in rc["metadata"]["name"]
            )

        cluster.wait_for(lambda: len(decode()) == 2, what="a new decode RayCluster beside the old one")
        new = next(name for name in decode() if name != old)
        assert cluster.get(*RC, new)["spec"]["workerGroupSpecs"][0]["numOfHosts"] == 9
        wait_resyncs(cluster, operator, rounds=2)  # resyncs while the new group starts: the old one stays
        assert old in decode() and cluster.get(*POOL, "deepseek-r1-decode")["status"]["readyGroups"] >= 1
        assert condition(cluster.get(*POOL, "deepseek-r1-decode"), "Progressing")["reason"] == "RollingOut"

        marked_at = time.time()
        kuberay.set_ready(new)
        cluster.wait_for(lambda: decode() == [new], what="the old RayCluster removed")
        deleted = [c for c in cluster.calls("operator") if c.verb == "delete" and c.name == old]
        assert deleted and deleted[0].at_s >= marked_at  # removed only after the new group was ready
        cluster.wait_for(lambda: is_ready(cluster, "deepseek-r1"), what="Ready again")


BAD_MEMORY = {"decode": {"expertParallel": 8, "redundantExperts": 0}}


def test_invalid_spec_is_reported_and_recovers(
    kube_crds: EmulatedCluster, kuberay: KubeRayDriver, start_operator: Any
) -> None:
    cluster = kube_crds
    body = manifest(name="too-small")
    body["spec"]["decode"].update(BAD_MEMORY["decode"])
    with pytest.raises(SpecInvalid) as info:
        parse_deployment(body)
    expected = "; ".join(info.value.messages)
    with start_operator() as operator:
        apply(cluster, body)  # the CRD's schema and CEL accept it; only the full validation refuses
        cluster.wait_for(
            lambda: condition(cluster.find(*MOED, "too-small"), "Invalid").get("status") == "True",
            what="the Invalid condition",
        )
        assert condition(cluster.get(*MOED, "too-small"), "Invalid")["message"] == expected
        events = cluster.wait_for(
            lambda: [e for e in cluster.list("v1", "Event", "default") if e.get("reason") == "InvalidSpec"],
            what="an InvalidSpec Event",
        )
        assert events[0]["message"] == expected and events[0]["type"] == "Warning"
        assert events[0]["involvedObject"]["name"] == "too-small"
        wait_quiet(cluster, operator, pools=0)
        assert owned_names(cluster)["pools"] == [] and kuberay.rayclusters("default") == []
        writes = cluster.request_count("operator", writes_only=True)
        wait_resyncs(cluster, operator, rounds=2, pools=0)
        assert cluster.request_count("operator", writes_only=True) == writes  # no Event per resync

        fixed = manifest(name="too-small")
        apply(cluster, fixed)
        cluster.wait_for(lambda: len(kuberay.rayclusters("default")) == 2, what="children after the fix")
        cluster.wait_for(
            lambda: condition(cluster.get(*MOED, "too-small"), "Invalid").get("status") == "False",
            what="Invalid cleared",
        )

        # A valid deployment made invalid keeps everything it has: nothing is deleted.
        broken = manifest(name="too-small")
        broken["spec"]["decode"].update(BAD_MEMORY["decode"])
        apply(cluster, broken)
        cluster.wait_for(
            lambda: condition(cluster.get(*MOED, "too-small"), "Invalid").get("status") == "True",
            what="Invalid again",
        )
        wait_resyncs(cluster, operator, rounds=2, pools=0)  # an invalid spec's resync stops before its pools
        assert len(kuberay.rayclusters("default")) == 2 and len(owned_names(cluster)["pools"]) == 2


def test_deletion_collects_children_and_redis_keys(
    kube_crds: EmulatedCluster, kuberay: KubeRayDriver, start_operator: Any, redis_server: Any
) -> None:
    cluster = kube_crds
    client = redis.Redis.from_url(redis_server.url)
    mine, other = DeploymentKeys("default", "deepseek-r1"), DeploymentKeys("default", "deepseek-r1-b")
    with start_operator(redis_url=redis_server.url):
        apply(cluster, manifest())
        cluster.wait_for(lambda: len(kuberay.rayclusters("default")) == 2, what="two RayClusters")
        assert cluster.get(*MOED, "deepseek-r1")["metadata"]["finalizers"] == ["moeplane.io/cleanup"]
        for n in range(1200):  # more than one SCAN batch
            client.set(mine.worker_alive(f"g{n}"), "1")
        client.xadd(mine.request_metrics(), {"ttft_ms": "12"})
        client.set(other.worker_alive("g0"), "1")

        cluster.kubectl("delete", "moed", "deepseek-r1", "--wait=true", "--timeout=30s")
        assert cluster.find(*MOED, "deepseek-r1") is None
        assert all(names == [] for names in owned_names(cluster).values())
        assert client.keys(mine.pattern()) == []
        assert client.exists(other.worker_alive("g0")) == 1
    client.delete(other.worker_alive("g0"))


def test_missing_kuberay_is_reported_until_installed(
    kube_crds: EmulatedCluster, monkeypatch: pytest.MonkeyPatch, operator_api_calls: set[tuple[str, str, str]]
) -> None:
    from moeplane.operator.config import OperatorConfig

    from tests.operator.harness import FAST, check_rbac, operator_in_thread

    cluster = kube_crds
    with operator_in_thread(cluster, OperatorConfig(**FAST), monkeypatch):
        apply(cluster, manifest("tiny-cpu.yaml"))
        events = cluster.wait_for(
            lambda: [
                e
                for e in cluster.list("v1", "Event", "default")
                if "install the KubeRay operator" in e["message"]
            ],
            what="an Event saying KubeRay is missing",
        )
        assert "rayclusters.ray.io/v1" in events[0]["message"]
        KubeRayDriver(cluster).install_crd()
        cluster.wait_for(
            lambda: len(cluster.list(*RC, "default")) == 2, timeout_s=60, what="RayClusters once served"
        )
    check_rbac(cluster, operator_api_calls)
