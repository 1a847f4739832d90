"""Which EP groups a pool runs, and in which RayCluster: scale and roll out one group at a time. Pure.

One EP group is one KubeRay replica group (its "slot"): group g of revision R is the replica with
index g of R's RayCluster, registered as `podcontract.group_id(pool, R, g)`. Serving is what the
registry says (a group registered live after loading its weights and passing its health probe),
never pod readiness.

A pass of `plan_pool` decides, from the slots and their serving states:
- groups drained on request (their pool stopped them) leave: their pods are named in
  `scaleStrategy.workersToDelete` and the replicas drop by as many, so KubeRay deletes exactly them;
- groups of an old revision that never registered leave the same way at once, and those that are
  registered but serve nothing (starting, restarting, failed, heartbeat lapsed) are drained at once:
  they hold no capacity, and a group is never killed under its pool while it is registered;
- the current revision grows towards `desired`, but while old groups remain, all groups together stay
  within `desired + surge`;
- surplus serving groups (old revisions first, else the current one's highest indices) are asked to
  drain, one at a time per surge, and only while the serving groups left stay >= `desired`.
So serving capacity never drops below `desired` on the operator's account, GPUs above it stay within
the surge, and a new revision that never serves leaves the old one serving. An edit in the middle
of a rollout makes the half-rolled revision an old one like any other (its starting groups leave at
once); a revert makes the old revision current again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from moeplane.bus.registry import GroupState, WorkerGroup


class SlotState(StrEnum):
    NEW = "new"  # pods there, the group never registered: it holds nothing, its pods may go at once
    STARTING = "starting"  # registered, loading its weights
    SERVING = "serving"  # registered live
    DOWN = "down"  # registered restarting or failed, or its heartbeat lapsed
    DRAINING = "draining"  # asked to drain; its pool has not stopped it yet
    DRAINED = "drained"  # its pool drained and stopped it: its pods may go

    @property
    def idle(self) -> bool:
        """Registered, but serving nothing: it is drained (deregistered by its own pool) without
        waiting for capacity elsewhere, never killed under its pool."""
        return self in (SlotState.STARTING, SlotState.DOWN)


@dataclass(frozen=True)
class Slot:
    """One replica group of a RayCluster that has pods (none of them already being deleted)."""

    index: int
    group_id: str
    pods: tuple[str, ...]
    state: SlotState
    message: str = ""  # why it is down, or why its pods do not run


@dataclass(frozen=True)
class ClusterView:
    name: str
    revision: str
    current: bool
    replicas: int  # the worker group's spec.replicas
    workers_to_delete: tuple[str, ...]  # its live scaleStrategy.workersToDelete
    pods: frozenset[str]  # every worker pod it has now
    slots: tuple[Slot, ...]  # replica groups with pods not named in workers_to_delete


@dataclass(frozen=True)
class ClusterChange:
    name: str
    replicas: int
    workers_to_delete: tuple[str, ...]


@dataclass(frozen=True)
class RolloutPlan:
    changes: dict[str, ClusterChange]  # by RayCluster name: its new replicas and workersToDelete
    delete: tuple[str, ...]  # old RayClusters with no group left
    drain: tuple[str, ...]  # group ids to ask to drain now
    forget: tuple[str, ...]  # drain bookkeeping of groups that are gone (or leaving now)
    serving: int  # groups registered live, over every revision
    current_serving: int
    draining: int
    down: tuple[str, ...] = field(default_factory=tuple)  # "group: why" of groups restarting/failed
    pending: tuple[str, ...] = field(default_factory=tuple)  # why current groups do not run yet


def slot_state(
    group_id: str,
    registered: Mapping[str, WorkerGroup],
    requested: frozenset[str],
    drained: frozenset[str],
    recorded: frozenset[str] = frozenset(),
) -> tuple[SlotState, str]:
    """A slot's state from the registry (`registered`: heartbeat alive; `recorded`: every id with a
    registration, alive or not) and the drain bookkeeping (what its pool reported last)."""
    if group_id in drained:
        return SlotState.DRAINED, ""
    group = registered.get(group_id)
    if group_id in requested or (group is not None and group.state is GroupState.DRAINING):
        return SlotState.DRAINING, ""
    if group is None:
        if group_id in recorded:
            return SlotState.DOWN, "its heartbeat lapsed"
        return SlotState.NEW, ""
    if group.state is GroupState.STARTING:
        return SlotState.STARTING, ""
    if group.state is GroupState.LIVE:
        return SlotState.SERVING, ""
    return SlotState.DOWN, group.message or group.state.value


def _by_index_desc(slots: Iterable[Slot]) -> list[Slot]:
    return sorted(slots, key=lambda s: -s.index)


def plan_pool(
    desired: int,
    surge: int,
    clusters: Iterable[ClusterView],
    bookkept: Iterable[str] = (),
) -> RolloutPlan:
    """One pass over a pool's RayClusters (exactly one of them `current`; see the module doc).

    `bookkept`: the group ids with a drain request or a drained mark in Redis; those that match no
    staying slot are returned in `forget`."""
    views = list(clusters)
    current = next(c for c in views if c.current)
    olds = [c for c in views if not c.current]
    remove: dict[str, list[Slot]] = {c.name: [] for c in views}
    drain: list[str] = []
    for c in views:
        for s in c.slots:
            # Drained groups leave; an old revision's groups that never registered leave at once,
            # and those registered that serve nothing are drained at once.
            if s.state is SlotState.DRAINED or (not c.current and s.state is SlotState.NEW):
                remove[c.name].append(s)
            elif not c.current and s.state.idle:
                drain.append(s.group_id)

    def kept(c: ClusterView) -> list[Slot]:
        gone = {s.index for s in remove[c.name]}
        return [s for s in c.slots if s.index not in gone]

    serving = sum(1 for c in views for s in kept(c) if s.state is SlotState.SERVING)
    draining = sum(1 for c in views for s in kept(c) if s.state is SlotState.DRAINING)
    old_kept = sum(len(kept(c)) for c in olds)

    # The current revision: replicas as asked, minus the groups leaving now.
    replicas = max(0, current.replicas - len(remove[current.name]))
    mine = kept(current)
    if replicas > desired:
        excess = replicas - desired
        unfilled = max(0, replicas - len(mine))  # replicas KubeRay has not made pods for yet
        drop = min(excess, unfilled)
        replicas, excess = replicas - drop, excess - drop
        for s in _by_index_desc(x for x in mine if x.state is SlotState.NEW):
            if excess <= 0:
                break
            remove[current.name].append(s)
            replicas, excess = replicas - 1, excess - 1
        excess -= sum(1 for s in mine if s.state is SlotState.DRAINING)
        for s in _by_index_desc(x for x in mine if x.state.idle):
            if excess <= 0:
                break
            drain.append(s.group_id)
            excess -= 1
        for s in _by_index_desc(x for x in mine if x.state is SlotState.SERVING):
            if excess <= 0 or serving - 1 < desired:
                break
            drain.append(s.group_id)
            serving, excess = serving - 1, excess - 1
    elif replicas < desired:
        # Within the surge while old groups remain; and never while a group of this RayCluster is
        # still leaving (KubeRay would hand its replica index to the new one first).
        budget = desired + (surge if old_kept else 0) - replicas - old_kept
        leaving = any(s.state in (SlotState.DRAINING, SlotState.DRAINED) for s in current.slots)
        if not leaving:
            replicas += max(0, min(desired - replicas, budget))

    # Old revisions: drain their serving groups while the rest keeps `desired` serving.
    if old_kept:
        excess = replicas + old_kept - desired
        excess -= sum(1 for c in olds for s in kept(c) if s.state is SlotState.DRAINING or s.state.idle)
        for c in sorted(olds, key=lambda c: c.name):
            for s in _by_index_desc(x for x in kept(c) if x.state is SlotState.SERVING):
                if excess <= 0 or serving - 1 < desired:
                    break
                drain.append(s.group_id)
                serving, excess = serving - 1, excess - 1

    changes: dict[str, ClusterChange] = {}
    delete: list[str] = []
    for c in views:
        doomed = [p for s in remove[c.name] for p in s.pods]
        still = tuple(sorted({p for p in c.workers_to_delete if p in c.pods} | set(doomed)))
        if c.current:
            target = replicas
        else:
            target = len(kept(c))
            if target == 0:
                delete.append(c.name)
                continue
        if target != c.replicas or still != tuple(sorted(c.workers_to_delete)):
            changes[c.name] = ClusterChange(c.name, target, still)

    staying = {s.group_id for c in views for s in kept(c) if c.name not in delete}
    staying -= {s.group_id for c in views for s in remove[c.name]}
    forget = tuple(sorted(g for g in set(bookkept) if g not in staying and g not in drain))
    down = tuple(
        f"group {s.group_id}: {s.message}" for c in views for s in kept(c) if s.state is SlotState.DOWN
    )
    pending = tuple(
        f"group {s.group_id}: {s.message}" for s in kept(current) if s.state is SlotState.NEW and s.message
    )
    current_serving = sum(1 for s in kept(current) if s.state is SlotState.SERVING)
    return RolloutPlan(
        changes=changes,
        delete=tuple(delete),
        drain=tuple(drain),
        forget=forget,
        serving=sum(1 for c in views for s in c.slots if s.state is SlotState.SERVING),
        current_serving=current_serving,
        draining=draining + len(drain),
        down=down,
        pending=pending,
    )
