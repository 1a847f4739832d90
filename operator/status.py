"""Status computed from observation, and the patch that writes it only when it changed. Pure.

Status is built from the typed models (`MoEPoolStatus`, `MoEDeploymentStatus`) and written in their
wire form, so a field the models do not declare can never be written.

Conditions keep their `lastTransitionTime` while their status stays the same, so a resync that
observes nothing new produces an identical status and no write.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from moeplane.api.enums import ConditionStatus, ConditionType, Role
from moeplane.api.spec import MoEPoolStatus
from moeplane.api.status import Condition, MoEDeploymentStatus, PoolStatus
from moeplane.operator.observe import PoolObservation

Obj = dict[str, Any]


@dataclass(frozen=True)
class Cond:
    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _true(flag: bool) -> ConditionStatus:
    return ConditionStatus.TRUE if flag else ConditionStatus.FALSE


def conditions_typed(
    conds: Sequence[Cond],
    previous: Sequence[Mapping[str, Any]],
    generation: int | None,
    now: datetime.datetime,
) -> list[Condition]:
    """A condition whose status did not change keeps its previous transition time."""
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in conds:
        old = before.get(cond.type.value)
        when = now
        if old is not None and old.get("status") == cond.status.value and old.get("lastTransitionTime"):
            when = datetime.datetime.fromisoformat(str(old["lastTransitionTime"]).replace("Z", "+00:00"))
        out.append(
            Condition(
                type=cond.type,
                status=cond.status,
                reason=cond.reason,
                message=cond.message,
                last_transition_time=when,
                observed_generation=generation,
            )
        )
    return out


@dataclass(frozen=True)
class EplbReading:
    """What the EPLB store in Redis says about a pool (workers/eplb/store.py); None: nothing yet."""

    placement_version: int | None = None
    balancedness: float | None = None


# ---- MoEPool -----------------------------------------------------------------------------------
def pool_conditions(obs: PoolObservation) -> list[Cond]:
    current_ready = obs.current_ready
    pending = "; ".join(obs.serving.pending) if obs.serving is not None else ""
    waits = f" (waiting: {pending})" if pending else ""
    if obs.suspended:
        ready = Cond(
            ConditionType.READY,
            ConditionStatus.FALSE,
            "Suspended",
            f"RayCluster {obs.current.name if obs.current else '?'} is suspended: it waits for admission "
            "(Kueue) and runs no pods",
        )
    elif obs.ready:
        ready = Cond(
            ConditionType.READY,
            ConditionStatus.TRUE,
            "GroupsReady",
            f"{current_ready}/{obs.desired_groups} EP groups ready",
        )
    else:
        ready = Cond(
            ConditionType.READY,
            ConditionStatus.FALSE,
            "WaitingForGroups",
            f"{current_ready}/{obs.desired_groups} EP groups of the current revision ready",
        )
    if obs.rolling_out:
        progressing = Cond(
            ConditionType.PROGRESSING,
            ConditionStatus.TRUE,
            "RollingOut",
            f"new revision {obs.current.revision if obs.current else '?'}: {current_ready}/"
            f"{obs.desired_groups} groups ready; {len(obs.old)} old RayCluster(s) serve meanwhile{waits}",
        )
    elif not obs.ready:
        progressing = Cond(
            ConditionType.PROGRESSING,
            ConditionStatus.TRUE,
            "Scaling",
            f"{current_ready}/{obs.desired_groups} EP groups ready{waits}",
        )
    else:
        progressing = Cond(
            ConditionType.PROGRESSING, ConditionStatus.FALSE, "Complete", "the pool is up to date"
        )
    failure = obs.failure
    down = obs.serving is not None and bool(obs.serving.down) and failure == "; ".join(obs.serving.down)
    degraded = Cond(
        ConditionType.DEGRADED,
        _true(failure is not None),
        ("GroupsDown" if down else "ReplicaFailure") if failure else "Healthy",
        failure or "",
    )
    return [ready, progressing, degraded]


def pool_status(
    obs: PoolObservation,
    selector: str,
    generation: int | None,
    previous: Mapping[str, Any] | None,
    now: datetime.datetime,
    eplb: EplbReading | None = None,
) -> Obj:
    previous = previous or {}
    eplb = eplb or EplbReading()
    return MoEPoolStatus(
        replicas=obs.existing_groups,
        ready_groups=obs.ready_groups,
        ready_workers=obs.ready_workers,
        selector=selector,
        observed_generation=generation,
        placement_version=eplb.placement_version,
        balancedness=eplb.balancedness,
        conditions=conditions_typed(pool_conditions(obs), previous.get("conditions") or [], generation, now),
    ).to_wire()


def refused_pool_status(
    message: str,
    selector: str,
    generation: int | None,
    previous: Mapping[str, Any] | None,
    now: datetime.datetime,
) -> Obj:
    """A MoEPool the operator does not run (made by hand): Invalid with the reason, nothing ready."""
    previous = previous or {}
    conds = [
        Cond(
            ConditionType.READY,
            ConditionStatus.FALSE,
            "NotOwnedByDeployment",
            "the operator runs no pods for it",
        ),
        Cond(ConditionType.INVALID, ConditionStatus.TRUE, "NotOwnedByDeployment", message),
    ]
    return MoEPoolStatus(
        selector=selector,
        observed_generation=generation,
        conditions=conditions_typed(conds, previous.get("conditions") or [], generation, now),
    ).to_wire()


# ---- MoEDeployment -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolSummary:
    """One pool as the deployment sees it (from the pool's spec and freshly computed status)."""

    role: Role
    desired_groups: int
    ready_groups: int
    ready_workers: int
    ready: bool
    rolling_out: bool
    failure: str | None
    gpus_per_group: int
    eplb: EplbReading = EplbReading()
    refused: str = ""  # why the operator runs nothing for this pool (made by hand), if it does not


def deployment_conditions(pools: Sequence[PoolSummary]) -> list[Cond]:
    waiting = [f"{p.role.value} {p.ready_groups}/{p.desired_groups}" for p in pools if not p.ready]
    all_ready = not waiting and len(pools) == len(Role)
    invalid = Cond(ConditionType.INVALID, ConditionStatus.FALSE, "SpecValid", "")
    if all_ready:
        ready = Cond(ConditionType.READY, ConditionStatus.TRUE, "PoolsReady", "every EP group is ready")
        progressing = Cond(
            ConditionType.PROGRESSING, ConditionStatus.FALSE, "Complete", "the deployment is up to date"
        )
    else:
        detail = "; ".join(waiting) if waiting else "pools are being created"
        ready = Cond(
            ConditionType.READY, ConditionStatus.FALSE, "WaitingForPools", f"EP groups ready: {detail}"
        )
        rolling = [p.role.value for p in pools if p.rolling_out]
        reason = "RollingOut" if rolling else "Scaling"
        progressing = Cond(
            ConditionType.PROGRESSING,
            ConditionStatus.TRUE,
            reason,
            f"rolling out {', '.join(rolling)}" if rolling else f"waiting for {detail}",
        )
    failures = [f"{p.role.value}: {p.failure}" for p in pools if p.failure]
    degraded = Cond(
        ConditionType.DEGRADED,
        _true(bool(failures)),
        "ReplicaFailure" if failures else "Healthy",
        "; ".join(failures),
    )
    return [ready, progressing, degraded, invalid]


def deployment_status(
    pools: Sequence[PoolSummary],
    generation: int | None,
    previous: Mapping[str, Any] | None,
    now: datetime.datetime,
) -> Obj:
    previous = previous or {}
    by_role = {
        p.role: PoolStatus(
            desired_groups=p.desired_groups,
            ready_groups=p.ready_groups,
            ready_workers=p.ready_workers,
            placement_version=p.eplb.placement_version,
            balancedness=p.eplb.balancedness,
        )
        for p in pools
    }
    return MoEDeploymentStatus(
        observed_generation=generation,
        conditions=conditions_typed(
            deployment_conditions(pools), previous.get("conditions") or [], generation, now
        ),
        prefill=by_role.get(Role.PREFILL),
        decode=by_role.get(Role.DECODE),
        total_gpus=sum(p.desired_groups * p.gpus_per_group for p in pools),
    ).to_wire()


def invalid_status(
    message: str, generation: int | None, previous: Mapping[str, Any] | None, now: datetime.datetime
) -> Obj:
    """Invalid=True with the exact validation message; the other conditions stay as they were."""
    previous = previous or {}
    kept = [c for c in previous.get("conditions") or [] if c.get("type") != ConditionType.INVALID.value]
    conds = [
        Cond(
            ConditionType(c["type"]), ConditionStatus(c["status"]), c.get("reason", ""), c.get("message", "")
        )
        for c in kept
        if c.get("type") in {t.value for t in ConditionType}
    ]
    if not any(c.type is ConditionType.READY for c in conds):
        conds.append(Cond(ConditionType.READY, ConditionStatus.FALSE, "SpecInvalid", "the spec is invalid"))
    conds.append(Cond(ConditionType.INVALID, ConditionStatus.TRUE, "SpecInvalid", message))
    # Keep the generation the other conditions were computed from.
    typed = conditions_typed(conds, previous.get("conditions") or [], generation, now)
    return MoEDeploymentStatus(observed_generation=generation, conditions=typed).to_wire()


# ---- writing -----------------------------------------------------------------------------------
def status_patch(current: Mapping[str, Any] | None, desired: Obj) -> Obj | None:
    """The merge patch of `status` (only keys the operator owns), or None when nothing changed.

    Fields others own (the planner's `lastDecision`) are untouched: a merge patch leaves keys it does
    not name alone. So are `placementVersion` and `balancedness` while Redis cannot be read.
    """
    current = current or {}
    patch: Obj = {}
    for key, value in desired.items():
        have = current.get(key)
        if isinstance(value, dict) and isinstance(have, dict):
            sub = {k: v for k, v in value.items() if have.get(k) != v}
            if sub:
                patch[key] = sub
        elif have != value:
            patch[key] = value
    return {"status": patch} if patch else None
