"""RayCluster status as KubeRay v1.6.2 computes it from the pods it sees (pure).

Ported from ray-operator/controllers/ray/raycluster_controller.go (`calculateStatus`,
`updateEndpoints`, `updateHeadInfo`) and ray-operator/controllers/ray/utils/util.go
(`CalculateReadyReplicas`, `CalculateAvailableReplicas`, `CalculateDesiredReplicas`,
`GetWorkerGroupDesiredReplicas`, `CalculateMin/MaxReplicas`, `CalculateDesiredResources`,
`CheckAllPodsRunning`, `FindHeadPodReadyCondition`, `IsRunningAndReady`), with the condition
semantics of k8s.io/apimachinery's `meta.SetStatusCondition` (a condition keeps its
lastTransitionTime while its status stays the same). RayClusterStatusConditions is on (beta,
default since v1.3: ray-operator/pkg/features/features.go).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tests.kube.podrunner import kuberay_api as K
from tests.kube.podrunner.quantity import parse_quantity

Obj = dict[str, Any]
MAX_INT32 = 2**31 - 1


@dataclass(frozen=True)
class ReconcileError:
    """The error `reconcilePods` returned; `failure_reason` is set for errRayClusterReplicaFailure markers
    (then KubeRay writes ReplicaFailure=True with this reason and `message`)."""

    message: str
    failure_reason: str | None = None


# ---- conditions (meta.SetStatusCondition / RemoveStatusCondition) -----------------------------------
def set_condition(conditions: list[Obj], cond: Obj, now: str, generation: int | None) -> None:
    """Add or update `cond` (type, status, reason, message) in place."""
    for existing in conditions:
        if existing.get("type") == cond["type"]:
            if existing.get("status") != cond["status"]:
                existing["status"] = cond["status"]
                existing["lastTransitionTime"] = now
            existing["reason"] = cond.get("reason", "")
            existing["message"] = cond.get("message", "")
            if generation is not None:
                existing["observedGeneration"] = generation
            return
    new = {
        "type": cond["type"],
        "status": cond["status"],
        "reason": cond.get("reason", ""),
        "message": cond.get("message", ""),
        "lastTransitionTime": now,
    }
    if generation is not None:
        new["observedGeneration"] = generation
    conditions.append(new)


def remove_condition(conditions: list[Obj], kind: str) -> None:
    conditions[:] = [c for c in conditions if c.get("type") != kind]


def condition_true(conditions: Iterable[Mapping[str, Any]], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


# ---- pods ----------------------------------------------------------------------------------------
def _labels(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("labels") or {}


def _phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def _pod_condition(pod: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return cond
    return None


def running_and_ready(pod: Mapping[str, Any]) -> bool:
    """utils.IsRunningAndReady."""
    cond = _pod_condition(pod, "Ready")
    return _phase(pod) == "Running" and cond is not None and cond.get("status") == "True"


def all_pods_running(pods: Sequence[Mapping[str, Any]]) -> bool:
    """utils.CheckAllPodsRunning: Running, and no Ready condition that is not True."""
    if not pods:
        return False
    for pod in pods:
        if _phase(pod) != "Running":
            return False
        cond = _pod_condition(pod, "Ready")
        if cond is not None and cond.get("status") != "True":
            return False
    return True


def head_pod_ready_condition(head: Mapping[str, Any]) -> Obj:
    """utils.FindHeadPodReadyCondition: the pod's Ready condition as HeadPodReady."""
    out: Obj = {"type": K.HEAD_POD_READY, "status": "False", "reason": K.UNKNOWN_REASON, "message": ""}
    cond = _pod_condition(head, "Ready")
    if cond is None:
        return out
    out["status"] = cond.get("status", "False")
    out["message"] = cond.get("message", "") or ""
    reason = cond.get("reason", "") or ""
    if out["status"] == "True" and not reason:
        reason = K.HEAD_POD_RUNNING_AND_READY
    if reason:
        out["reason"] = reason
    if reason == K.CONTAINERS_NOT_READY:  # firstNotReadyContainerStatus
        for status in (head.get("status") or {}).get("containerStatuses") or ():
            state = status.get("state") or {}
            detail = state.get("waiting") or state.get("terminated")
            if detail:
                if out["message"]:
                    out["message"] += "; "
                out["message"] += f"{status.get('name')}: {detail.get('message', '')}"
                out["reason"] = detail.get("reason", "")
                break
    return out


# ---- replicas and resources ----------------------------------------------------------------------
def _max_replicas(group: Mapping[str, Any]) -> int:
    value = group.get("maxReplicas")
    return MAX_INT32 if value is None else int(value)


def group_desired_pods(group: Mapping[str, Any]) -> int:
    """utils.GetWorkerGroupDesiredReplicas: replicas within [min, max], times numOfHosts."""
    if group.get("suspend"):
        return 0
    low = int(group.get("minReplicas") or 0)
    high = _max_replicas(group)
    replicas = group.get("replicas")
    if replicas is None or int(replicas) < low:
        count = low
    elif int(replicas) > high:
        count = high
    else:
        count = int(replicas)
    return count * int(group.get("numOfHosts") or 1)


def _groups(rc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((rc.get("spec") or {}).get("workerGroupSpecs") or [])


def _pod_resources(pod_spec: Mapping[str, Any]) -> dict[str, Fraction]:
    """utils.CalculatePodResource: requests, else limits, summed over containers."""
    total: dict[str, Fraction] = {}
    for container in pod_spec.get("containers") or ():
        resources = container.get("resources") or {}
        merged = dict(resources.get("requests") or {})
        for name, q in (resources.get("limits") or {}).items():
            merged.setdefault(name, q)
        for name, q in merged.items():
            total[name] = total.get(name, Fraction(0)) + parse_quantity(q)
    return total


def format_quantity(amount: Fraction, name: str) -> str:
    """A canonical quantity string: whole numbers plain, millis for CPU fractions, binary suffixes."""
    if amount == 0:
        return "0"
    if amount.denominator != 1:
        return f"{int(amount * 1000)}m"
    whole = int(amount)
    if name == "memory" or name.endswith("storage"):
        for suffix, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
            if whole % size == 0:
                return f"{whole // size}{suffix}"
    return str(whole)


def desired_resources(rc: Mapping[str, Any]) -> dict[str, Fraction]:
    """utils.CalculateDesiredResources."""
    spec = rc.get("spec") or {}
    total = _pod_resources(((spec.get("headGroupSpec") or {}).get("template") or {}).get("spec") or {})
    for group in _groups(rc):
        if group.get("suspend"):
            continue
        per = _pod_resources((group.get("template") or {}).get("spec") or {})
        hosts = int(group.get("numOfHosts") or 1)
        for _ in range(int(group.get("replicas") or 0)):
            for name, q in per.items():
                total[name] = total.get(name, Fraction(0)) + q * hosts
    return total


# ---- calculateStatus -------------------------------------------------------------------------------
def calculate_status(
    rc: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    services: Sequence[Mapping[str, Any]],
    error: ReconcileError | None,
    now: str,
) -> Obj:
    """The status KubeRay writes after a reconcile that saw `pods` (the cluster's, by ray.io/cluster)
    and `services` (its head Service), with `error` as reconcilePods' result."""
    meta = rc["metadata"]
    generation = int(meta.get("generation") or 0) or None
    old: Obj = copy.deepcopy(rc.get("status") or {})
    status: Obj = copy.deepcopy(old)
    conditions: list[Obj] = status.setdefault("conditions", [])
    if error is not None:
        if error.failure_reason:
            set_condition(
                conditions,
                {
                    "type": K.REPLICA_FAILURE,
                    "status": "True",
                    "reason": error.failure_reason,
                    "message": error.message,
                },
                now,
                None,
            )
    else:
        remove_condition(conditions, K.REPLICA_FAILURE)
    status["observedGeneration"] = int(meta.get("generation") or 0)
    workers = [p for p in pods if _labels(p).get(K.RAY_NODE_TYPE_LABEL) == K.WORKER_NODE]
    status["readyWorkerReplicas"] = sum(1 for p in workers if running_and_ready(p))
    status["availableWorkerReplicas"] = sum(1 for p in workers if _phase(p) == "Running")
    status["desiredWorkerReplicas"] = sum(group_desired_pods(g) for g in _groups(rc))
    status["minWorkerReplicas"] = sum(
        int(g.get("minReplicas") or 0) * int(g.get("numOfHosts") or 1)
        for g in _groups(rc)
        if not g.get("suspend")
    )
    status["maxWorkerReplicas"] = min(
        MAX_INT32,
        sum(_max_replicas(g) * int(g.get("numOfHosts") or 1) for g in _groups(rc) if not g.get("suspend")),
    )
    resources = desired_resources(rc)
    status["desiredCPU"] = format_quantity(resources.get("cpu", Fraction(0)), "cpu")
    status["desiredMemory"] = format_quantity(resources.get("memory", Fraction(0)), "memory")
    gpus = sum((q for name, q in resources.items() if name.endswith("gpu")), Fraction(0))
    status["desiredGPU"] = format_quantity(gpus, "gpu")
    status["desiredTPU"] = format_quantity(resources.get("google.com/tpu", Fraction(0)), "tpu")
    if error is None and len(pods) == status["desiredWorkerReplicas"] + 1 and all_pods_running(pods):
        status["state"] = K.STATE_READY
        status["reason"] = ""
    heads = [p for p in pods if _labels(p).get(K.RAY_NODE_TYPE_LABEL) == K.HEAD_NODE]
    head = heads[0] if len(heads) == 1 else None
    if head is None:
        set_condition(
            conditions,
            {
                "type": K.HEAD_POD_READY,
                "status": "False",
                "reason": K.HEAD_POD_NOT_FOUND,
                "message": "Head Pod not found",
            },
            now,
            None,
        )
    else:
        set_condition(conditions, head_pod_ready_condition(head), now, None)
    if not condition_true(conditions, K.RAY_CLUSTER_PROVISIONED):
        if all_pods_running(pods):
            set_condition(
                conditions,
                {
                    "type": K.RAY_CLUSTER_PROVISIONED,
                    "status": "True",
                    "reason": K.ALL_POD_RUNNING_AND_READY_FIRST_TIME,
                    "message": "All Ray Pods are ready for the first time",
                },
                now,
                None,
            )
        else:
            set_condition(
                conditions,
                {
                    "type": K.RAY_CLUSTER_PROVISIONED,
                    "status": "False",
                    "reason": K.RAY_CLUSTER_PODS_PROVISIONING,
                    "message": "RayCluster Pods are being provisioned for first time",
                },
                now,
                None,
            )
    set_condition(
        conditions,
        {"type": K.RAY_CLUSTER_SUSPENDED, "status": "False", "reason": K.RAY_CLUSTER_SUSPENDED},
        now,
        None,
    )
    set_condition(
        conditions,
        {"type": K.RAY_CLUSTER_SUSPENDING, "status": "False", "reason": K.RAY_CLUSTER_SUSPENDING},
        now,
        None,
    )
    if services:
        endpoints = dict(status.get("endpoints") or {})
        for port in (services[0].get("spec") or {}).get("ports") or ():
            if port.get("name"):
                target = port.get("nodePort") or port.get("targetPort") or port.get("port")
                endpoints[str(port["name"])] = str(target)
        status["endpoints"] = endpoints
    head_info: Obj = {}
    if head is not None:
        head_info["podIP"] = (head.get("status") or {}).get("podIP", "")
        head_info["podName"] = head["metadata"]["name"]
    if services:
        svc = services[0]
        head_info["serviceName"] = svc["metadata"]["name"]
        cluster_ip = (svc.get("spec") or {}).get("clusterIP")
        head_info["serviceIP"] = head_info.get("podIP", "") if cluster_ip == "None" else cluster_ip or ""
    status["head"] = {k: v for k, v in head_info.items() if v}
    if old.get("state") != status.get("state"):
        status.setdefault("stateTransitionTimes", {})[status.get("state", "")] = now
    status["lastUpdateTime"] = now
    _ = generation
    return status


def essence(status: Mapping[str, Any]) -> Obj:
    """What decides whether KubeRay writes the status (utils.InconsistentRayClusterStatus ignores
    lastUpdateTime and transition times)."""
    out = {
        k: v for k, v in status.items() if k not in ("conditions", "lastUpdateTime", "stateTransitionTimes")
    }
    out["conditions"] = sorted(
        (str(c.get("type")), str(c.get("status")), str(c.get("reason", "")), str(c.get("message", "")))
        for c in status.get("conditions") or []
    )
    return out
