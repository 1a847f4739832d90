"""What KubeRay v1.6.2's `reconcilePods` does with a RayCluster's pods: one pass, as actions (pure).

Ported from ray-operator/controllers/ray/raycluster_controller.go: `reconcilePods` (the head; the
single-host worker path with `workersToDelete` and scale-down in List order) and
`reconcileMultiHostWorkerGroup` (numOfHosts > 1 with RayMultiHostIndexing, on by default since
v1.6: incomplete replica groups are deleted whole, an unhealthy pod takes its whole replica group
with it, `workersToDelete` naming one pod deletes its whole replica group, and a scale-down deletes
whole replica groups in Go map order, i.e. in no particular order), plus `shouldDeletePod`.

Like KubeRay, a pass that deletes something to repair (unhealthy pods, incomplete groups,
workersToDelete in multi-host groups) returns an error and creates nothing: the next pass does.
KubeRay's scale expectations are not modelled: the caller applies a pass's actions to the store
before computing the next one, which is what the expectations guarantee.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.kube.podrunner import kuberay_api as K
from tests.kube.podrunner.kuberay_pods import DEFAULT_CONFIG, KubeRayConfig, head_pod, worker_pod
from tests.kube.podrunner.kuberay_status import group_desired_pods

Obj = dict[str, Any]


@dataclass(frozen=True)
class Victim:
    """A scale-down candidate: a worker pod (single host) or a whole replica group (multi-host)."""

    name: str  # the pod's, or the replica group's
    replica_index: int
    created: str  # creationTimestamp of its (oldest) pod


# The order KubeRay picks scale-down victims in. It has none: single-host pods come in the order of
# its cache's List and replica groups in Go map order, both arbitrary. Any order is KubeRay's.
VictimOrder = Callable[[Sequence[Victim]], Sequence[Victim]]


def oldest_first(victims: Sequence[Victim]) -> list[Victim]:
    """The runner's default: the oldest first. Deterministic, and the least favourable to a
    supervisor that keeps its lowest-index groups (they were placed first, on the oldest pods)."""
    return sorted(victims, key=lambda v: (v.created, v.replica_index, v.name))


@dataclass(frozen=True)
class CreatePod:
    pod: Obj
    failure_reason: str  # the ReplicaFailure reason if the API server refuses it


@dataclass(frozen=True)
class DeletePod:
    name: str
    reason: str
    failure_reason: str = K.FAILED_DELETE_WORKER_POD


@dataclass
class Pass:
    """One reconcilePods pass: pods to create and delete, and the error it returns (None: success)."""

    creates: list[CreatePod] = field(default_factory=list)
    deletes: list[DeletePod] = field(default_factory=list)
    error: str | None = None


def should_delete_pod(pod: Mapping[str, Any], node_type: str) -> tuple[bool, str]:
    """shouldDeletePod: a terminal pod, or a Running pod whose Ray container ended under restartPolicy
    Never."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    phase = status.get("phase") or ""
    if phase in ("Failed", "Succeeded"):
        return True, (
            f"The {node_type} Pod {name} status is {phase} which is a terminal state. "
            "KubeRay will delete the Pod and create new Pods in the next reconciliation if necessary."
        )
    ray_name = ((pod.get("spec") or {}).get("containers") or [{}])[K.RAY_CONTAINER_INDEX].get("name")
    terminated = next(
        (
            (s.get("state") or {}).get("terminated")
            for s in status.get("containerStatuses") or ()
            if s.get("name") == ray_name
        ),
        None,
    )
    policy = (pod.get("spec") or {}).get("restartPolicy") or "Always"
    if phase == "Running" and terminated and policy == "Never":
        return True, (
            f"The Pod status of the {node_type} Pod {name} is {phase}, and the Ray container "
            f"terminated status is {terminated}. The container is unable to restart due to its "
            f"restart policy {policy}, so KubeRay will delete it."
        )
    return False, ""


def _labels(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return pod["metadata"].get("labels") or {}


def _by_name(pods: Sequence[Obj]) -> list[Obj]:
    # The controller-runtime cache lists in key order; the generated suffix makes that arbitrary.
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def reconcile_pods(
    rc: Mapping[str, Any],
    pods: Sequence[Obj],
    new_replica_name: Callable[[str], str],
    victim_order: VictimOrder = oldest_first,
    config: KubeRayConfig = DEFAULT_CONFIG,
) -> Pass:
    """One pass over the RayCluster's live pods (those labelled ray.io/cluster=<name>, not deleting)."""
    out = Pass()
    name = rc["metadata"]["name"]
    mine = [p for p in pods if _labels(p).get(K.RAY_CLUSTER_LABEL) == name]
    heads = [p for p in mine if _labels(p).get(K.RAY_NODE_TYPE_LABEL) == K.HEAD_NODE]
    if len(heads) == 1:
        delete, reason = should_delete_pod(heads[0], K.HEAD_NODE)
        if delete:
            out.deletes.append(DeletePod(heads[0]["metadata"]["name"], reason, K.FAILED_DELETE_HEAD_POD))
            out.error = reason
            return out
    elif not heads:
        out.creates.append(CreatePod(head_pod(rc, config), K.FAILED_CREATE_HEAD_POD))
    else:
        names = sorted(p["metadata"]["name"] for p in heads)
        out.error = f"{len(heads)} head pods found {names}. Please delete extra head pods"
        return out
    for group in (rc.get("spec") or {}).get("workerGroupSpecs") or ():
        group_pods = _by_name(
            [
                p
                for p in mine
                if _labels(p).get(K.RAY_NODE_GROUP_LABEL) == group["groupName"]
                and _labels(p).get(K.RAY_NODE_TYPE_LABEL) == K.WORKER_NODE
            ]
        )
        if group.get("suspend"):
            out.deletes.extend(DeletePod(p["metadata"]["name"], "worker group suspended") for p in group_pods)
            continue
        if int(group.get("numOfHosts") or 1) > 1:
            error = _multi_host(rc, group, group_pods, out, new_replica_name, victim_order, config)
        else:
            error = _single_host(rc, group, group_pods, out, victim_order, config)
        if error:
            out.error = error
            return out
    return out


def _index(pod: Mapping[str, Any]) -> int:
    try:
        return int(_labels(pod).get(K.RAY_WORKER_REPLICA_INDEX_LABEL, -1))
    except ValueError:
        return -1


def _single_host(
    rc: Mapping[str, Any],
    group: Mapping[str, Any],
    pods: list[Obj],
    out: Pass,
    victim_order: VictimOrder,
    config: KubeRayConfig,
) -> str | None:
    unhealthy = [(p, r) for p in pods for d, r in [should_delete_pod(p, K.WORKER_NODE)] if d]
    if unhealthy:
        out.deletes.extend(DeletePod(p["metadata"]["name"], r) for p, r in unhealthy)
        return f"delete {len(unhealthy)} unhealthy worker Pods"
    # Always remove the WorkersToDelete, whatever replicas says (a missing pod is skipped).
    existing = {p["metadata"]["name"] for p in pods}
    doomed = [n for n in (group.get("scaleStrategy") or {}).get("workersToDelete") or () if n in existing]
    out.deletes.extend(DeletePod(n, "scaleStrategy.workersToDelete") for n in doomed)
    running = [p for p in pods if p["metadata"]["name"] not in doomed]
    diff = group_desired_pods(group) - len(running)
    used = {int(_labels(p).get(K.RAY_WORKER_REPLICA_INDEX_LABEL, -1)) for p in running}
    index = 0
    for _ in range(max(0, diff)):
        while index in used:
            index += 1
        used.add(index)
        out.creates.append(CreatePod(worker_pod(rc, group, "", index, 0, config), K.FAILED_CREATE_WORKER_POD))
    # Autoscaling is off, so KubeRay deletes -diff pods in its List's (arbitrary) order.
    victims = [
        Victim(p["metadata"]["name"], _index(p), p["metadata"].get("creationTimestamp", "")) for p in running
    ]
    out.deletes.extend(
        DeletePod(v.name, "scaling down") for v in list(victim_order(victims))[: max(0, -diff)]
    )
    return None


def _multi_host(
    rc: Mapping[str, Any],
    group: Mapping[str, Any],
    pods: list[Obj],
    out: Pass,
    new_replica_name: Callable[[str], str],
    victim_order: VictimOrder,
    config: KubeRayConfig,
) -> str | None:
    hosts = int(group.get("numOfHosts") or 1)
    replicas: dict[str, list[Obj]] = {}
    for pod in pods:
        replica = _labels(pod).get(K.RAY_WORKER_REPLICA_NAME_LABEL)
        if replica is not None:
            replicas.setdefault(replica, []).append(pod)
    for replica in sorted(replicas):
        if len(replicas[replica]) < hosts:
            out.deletes.extend(
                DeletePod(p["metadata"]["name"], "cleanup of incomplete multi-host group")
                for p in replicas[replica]
            )
            return f"cleaned up incomplete replica group {replica}, requeueing"
    deleted: set[str] = set()
    for pod in pods:
        if pod["metadata"]["name"] in deleted:
            continue
        delete, reason = should_delete_pod(pod, K.WORKER_NODE)
        replica = _labels(pod).get(K.RAY_WORKER_REPLICA_NAME_LABEL)
        if delete and replica in replicas:
            out.deletes.extend(DeletePod(p["metadata"]["name"], reason) for p in replicas[replica])
            deleted |= {p["metadata"]["name"] for p in replicas[replica]}
    to_delete = (group.get("scaleStrategy") or {}).get("workersToDelete") or ()
    if to_delete:
        doomed: dict[str, Obj] = {}
        for name in to_delete:
            named = next((p for p in pods if p["metadata"]["name"] == name), None)
            if named is not None:
                for p in replicas.get(_labels(named).get(K.RAY_WORKER_REPLICA_NAME_LABEL, ""), []):
                    doomed[p["metadata"]["name"]] = p
        if doomed:
            out.deletes.extend(DeletePod(n, "autoscaler scale-down request") for n in sorted(doomed))
            return f"deleted {len(doomed)} worker Pods based on ScaleStrategy, requeueing"
    valid = [r for r, ps in replicas.items() if not any(p["metadata"]["name"] in deleted for p in ps)]
    expected_pods = group_desired_pods(group)
    if expected_pods % hosts:
        return (
            f"desired worker pods ({expected_pods}) is not a multiple of NumOfHosts ({hosts}) "
            f"for group {group['groupName']}"
        )
    to_create = expected_pods // hosts - len(valid)
    used = {int(_labels(replicas[r][0]).get(K.RAY_WORKER_REPLICA_INDEX_LABEL, -1)) for r in valid}
    index = 0
    for _ in range(max(0, to_create)):
        while index in used:
            index += 1
        used.add(index)
        replica_name = new_replica_name(str(group["groupName"]))
        for host in range(hosts):
            out.creates.append(
                CreatePod(
                    worker_pod(rc, group, replica_name, index, host, config), K.FAILED_CREATE_WORKER_POD
                )
            )
    if to_create < 0:
        victims = [
            Victim(
                r,
                _index(replicas[r][0]),
                min(p["metadata"].get("creationTimestamp", "") for p in replicas[r]),
            )
            for r in valid
        ]
        for victim in list(victim_order(victims))[:-to_create]:
            out.deletes.extend(
                DeletePod(p["metadata"]["name"], "scaling down") for p in replicas[victim.name]
            )
    return None
