"""What the operator reads back from KubeRay: readiness of the RayClusters of a pool. Pure.

Condition types and reasons are KubeRay's own (ray-operator/apis/ray/v1/raycluster_types.go, KubeRay
v1.6.0; the `ReplicaFailure` reasons from ray-operator/controllers/ray/utils/constant.go). KubeRay
>= 1.6 writes conditions by default (feature RayClusterStatusConditions). The deprecated
`status.state` is not read: KubeRay sets it to `ready` once and never clears it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from moeplane.operator import names


class RayClusterCondition(StrEnum):
    """`RayClusterConditionType` values (raycluster_types.go)."""

    PROVISIONED = "RayClusterProvisioned"  # all pods were ready once; never set back
    HEAD_POD_READY = "HeadPodReady"  # the head pod's own Ready condition
    REPLICA_FAILURE = "ReplicaFailure"  # a pod could not be created or deleted
    SUSPENDING = "RayClusterSuspending"
    SUSPENDED = "RayClusterSuspended"  # e.g. Kueue has not admitted the RayCluster


# Reasons KubeRay gives ReplicaFailure (utils/constant.go: errRayClusterReplicaFailure markers).
REPLICA_FAILURE_REASONS = (
    "FailedDeleteAllPods",
    "FailedDeleteHeadPod",
    "FailedCreateHeadPod",
    "FailedDeleteWorkerPod",
    "FailedCreateWorkerPod",
)
HEAD_POD_NOT_FOUND = "HeadPodNotFound"


def _find(status: Mapping[str, Any], kind: RayClusterCondition) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or () if c.get("type") == kind.value), None)


def _true(status: Mapping[str, Any], kind: RayClusterCondition) -> bool:
    cond = _find(status, kind)
    return cond is not None and cond.get("status") == "True"


@dataclass(frozen=True)
class RayClusterObservation:
    """One RayCluster as KubeRay reports it (`status.readyWorkerReplicas` counts pods, not groups)."""

    name: str
    uid: str
    revision: str
    replicas: int
    hosts_per_group: int
    ready_workers: int
    head_ready: bool
    failure: str | None  # KubeRay's ReplicaFailure, "reason: message", when it reports one
    deleting: bool
    suspended: bool = False  # RayClusterSuspending/Suspended: no pods (Kueue has not admitted it)

    @property
    def ready_groups(self) -> int:
        """EP groups that can serve: every host of the group is ready, and so is the head.

        KubeRay counts ready worker pods; a multi-host group is ready only when all its
        `numOfHosts` pods are, so whole groups are ready pods // hosts (never more than asked).
        """
        if not self.head_ready or self.deleting or self.suspended:
            return 0
        return min(self.replicas, self.ready_workers // max(self.hosts_per_group, 1))

    @property
    def fully_ready(self) -> bool:
        return self.ready_groups >= self.replicas


def observe_raycluster(body: Mapping[str, Any]) -> RayClusterObservation:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    groups = spec.get("workerGroupSpecs") or [{}]
    group = groups[0]
    failure = None
    if _true(status, RayClusterCondition.REPLICA_FAILURE):
        cond = _find(status, RayClusterCondition.REPLICA_FAILURE) or {}
        reason, message = str(cond.get("reason") or "ReplicaFailure"), str(cond.get("message") or "")
        failure = f"{reason}: {message}" if message else reason
    return RayClusterObservation(
        name=str(meta.get("name")),
        uid=str(meta.get("uid", "")),
        revision=str((meta.get("labels") or {}).get(names.REVISION_LABEL, "")),
        replicas=int(group.get("replicas") or 0),
        hosts_per_group=int(group.get("numOfHosts") or 1),
        ready_workers=int(status.get("readyWorkerReplicas") or 0),
        head_ready=_true(status, RayClusterCondition.HEAD_POD_READY),
        failure=failure,
        deleting=bool(meta.get("deletionTimestamp")),
        suspended=_true(status, RayClusterCondition.SUSPENDING)
        or _true(status, RayClusterCondition.SUSPENDED),
    )


@dataclass(frozen=True)
class Serving:
    """What the worker registry says about a pool's groups (operator/groups.py, rollout.py)."""

    groups: int  # registered live, over every revision
    current: int  # of them, the current revision's
    draining: int  # asked to drain and not stopped yet
    down: tuple[str, ...] = ()  # "group ID: why" of groups restarting or failed
    pending: tuple[str, ...] = ()  # why groups of the current revision do not run yet


@dataclass(frozen=True)
class PoolObservation:
    """The RayClusters of one pool: the current revision and any older ones still rolling out.

    With `serving` (the operator reads a registry), readiness is serving readiness: a group is
    ready when it is registered live after loading its weights, whatever its pods say. Without it,
    ready groups are counted from KubeRay's ready pods."""

    desired_groups: int
    current: RayClusterObservation | None
    old: tuple[RayClusterObservation, ...]
    serving: Serving | None = None

    @property
    def ready_groups(self) -> int:
        """Serving capacity: ready groups of every revision (old ones serve until replaced)."""
        if self.serving is not None:
            return self.serving.groups
        current = self.current.ready_groups if self.current else 0
        return current + sum(o.ready_groups for o in self.old)

    @property
    def current_ready(self) -> int:
        if self.serving is not None:
            return self.serving.current
        return self.current.ready_groups if self.current else 0

    @property
    def ready_workers(self) -> int:
        clusters = ([self.current] if self.current else []) + list(self.old)
        return sum(c.ready_workers for c in clusters if not c.deleting)

    @property
    def existing_groups(self) -> int:
        return self.current.replicas if self.current else 0

    @property
    def rolling_out(self) -> bool:
        return bool(self.old)

    @property
    def ready(self) -> bool:
        return (
            not self.old
            and self.current_ready >= self.desired_groups
            and (self.current is not None and self.current.replicas == self.desired_groups)
            and (self.serving is None or not self.serving.draining)
            # Serving readiness includes the head's own (its `moeplane pool` probe: every group up).
            and (self.serving is None or self.current.head_ready)
        )

    @property
    def suspended(self) -> bool:
        return self.current is not None and self.current.suspended

    @property
    def failure(self) -> str | None:
        """Why the pool is degraded: KubeRay's ReplicaFailure, or EP groups restarting or failed."""
        for c in ([self.current] if self.current else []) + list(self.old):
            if c.failure:
                return f"RayCluster {c.name}: {c.failure}"
        if self.serving is not None and self.serving.down:
            return "; ".join(self.serving.down)
        return None


def observe_pool(
    desired_groups: int, current_name: str, rayclusters: Iterable[Mapping[str, Any]]
) -> PoolObservation:
    observed = [observe_raycluster(rc) for rc in rayclusters]
    current = next((o for o in observed if o.name == current_name), None)
    old = tuple(sorted((o for o in observed if o.name != current_name), key=lambda o: o.name))
    return PoolObservation(desired_groups=desired_groups, current=current, old=old)
