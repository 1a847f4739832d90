"""operator/rollout.py: scale-downs drain before they remove, rollouts move one group at a time within
the surge, never below the desired serving capacity; edits and reverts mid-rollout converge.

The plan is simulated to convergence against a tiny model of KubeRay (replicas + workersToDelete ->
pods) and of the pools (a drain request becomes drained; a new group becomes serving when asked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from moeplane.api import podcontract as pc
from moeplane.api.enums import Role
from moeplane.operator.rollout import ClusterView, RolloutPlan, Slot, SlotState, plan_pool, slot_state

from moeplane.bus.registry import GroupState, WorkerGroup

pytestmark = pytest.mark.unit
POOL = "tiny-decode"


def _group(gid: str, state: GroupState) -> WorkerGroup:
    return WorkerGroup(
        group_id=gid, role=Role.DECODE, address="10.0.0.1:1", model="m", ep_size=2, block_size_tokens=16,
        kv_blocks_total=8, kv_blocks_free=8, max_blocks_per_rank=4, queue_depth=0, heartbeat_at_s=1.0,
        state=state,
    )  # fmt: skip


def test_slot_states_come_from_the_registry_and_the_drain_bookkeeping() -> None:
    reg = {
        "a": _group("a", GroupState.LIVE),
        "b": _group("b", GroupState.STARTING),
        "c": _group("c", GroupState.RESTARTING).model_copy(update={"message": "rank 1 died"}),
        "d": _group("d", GroupState.DRAINING),
    }
    none: frozenset[str] = frozenset()
    assert slot_state("a", reg, none, none) == (SlotState.SERVING, "")
    assert slot_state("b", reg, none, none) == (SlotState.STARTING, "")
    assert slot_state("x", reg, none, none) == (SlotState.NEW, "")  # pods up, never registered
    assert slot_state("x", reg, none, none, frozenset({"x"})) == (SlotState.DOWN, "its heartbeat lapsed")
    assert slot_state("c", reg, none, none) == (SlotState.DOWN, "rank 1 died")
    assert slot_state("d", reg, none, none)[0] is SlotState.DRAINING
    assert slot_state("a", reg, frozenset({"a"}), none)[0] is SlotState.DRAINING
    assert slot_state("a", reg, frozenset({"a"}), frozenset({"a"}))[0] is SlotState.DRAINED


# ---- a small world: KubeRay + pools, stepped with the planner ----------------------------------------
@dataclass
class Cluster:
    name: str
    revision: str
    replicas: int
    to_delete: tuple[str, ...] = ()
    pods: dict[int, str] = field(default_factory=dict)  # replica index -> pod
    serves: bool = True  # its new groups come up (False: they never schedule)
    counter: int = 0

    def kuberay(self) -> None:
        for index, pod in list(self.pods.items()):
            if pod in self.to_delete:
                del self.pods[index]
        self.to_delete = ()
        index = 0
        while len(self.pods) < self.replicas:
            while index in self.pods:
                index += 1
            self.counter += 1
            self.pods[index] = f"{self.name}-w{self.counter}"
        while len(self.pods) > self.replicas:  # KubeRay's own (arbitrary) choice: never wanted here
            raise AssertionError(f"{self.name}: KubeRay would pick a victim itself")


@dataclass
class World:
    desired: int
    surge: int = 1
    clusters: dict[str, Cluster] = field(default_factory=dict)
    live: set[str] = field(default_factory=set)  # registered live
    requested: set[str] = field(default_factory=set)
    drained: set[str] = field(default_factory=set)
    min_serving: int = 10**6
    max_groups: int = 0
    stopped_serving: list[str] = field(default_factory=list)

    def gid(self, c: Cluster, index: int) -> str:
        return pc.group_id(POOL, c.revision, index)

    def views(self, current: str) -> list[ClusterView]:
        out = []
        for c in self.clusters.values():
            slots = []
            for index, pod in sorted(c.pods.items()):
                if pod in c.to_delete:
                    continue
                gid = self.gid(c, index)
                reg = {gid: _group(gid, GroupState.LIVE)} if gid in self.live else {}
                state, message = slot_state(gid, reg, frozenset(self.requested), frozenset(self.drained))
                slots.append(Slot(index, gid, (pod,), state, message))
            out.append(
                ClusterView(c.name, c.revision, c.name == current, c.replicas, c.to_delete,
                            frozenset(c.pods.values()), tuple(slots))
            )  # fmt: skip
        if current not in self.clusters:
            out.insert(0, ClusterView(current, "", True, 0, (), frozenset(), ()))
        return out

    def step(self, revision: str, serves: bool = True) -> RolloutPlan:
        current = f"rc-{revision}"
        plan = plan_pool(self.desired, self.surge, self.views(current), self.requested | self.drained)
        if current not in self.clusters:
            made = plan.changes.get(current)
            self.clusters[current] = Cluster(current, revision, made.replicas if made else 0, serves=serves)
        for name, change in plan.changes.items():
            self.clusters[name].replicas = change.replicas
            self.clusters[name].to_delete = change.workers_to_delete
        for name in plan.delete:
            for index in self.clusters[name].pods:
                assert self.gid(self.clusters[name], index) not in self.live, "deleted a serving group"
            del self.clusters[name]
        self.requested -= set(plan.forget)
        self.drained -= set(plan.forget)
        self.requested |= set(plan.drain)
        # The pools: drains finish, new groups come up; KubeRay makes and deletes pods.
        for gid in list(self.requested):
            if gid in self.live:
                self.live.discard(gid)
                self.stopped_serving.append(gid)
            self.drained.add(gid)
        for c in self.clusters.values():
            removed = {self.gid(c, i) for i, p in c.pods.items() if p in c.to_delete}
            assert not removed & self.live, f"pods of serving groups deleted: {removed & self.live}"
            c.kuberay()
            for index in c.pods:
                gid = self.gid(c, index)
                if c.serves and gid not in self.requested and gid not in self.drained:
                    self.live.add(gid)
        self.min_serving = min(self.min_serving, len(self.live))
        self.max_groups = max(self.max_groups, sum(c.replicas for c in self.clusters.values()))
        return plan

    def run(self, revision: str, serves: bool = True, passes: int = 30) -> RolloutPlan:
        plan = self.step(revision, serves)
        for _ in range(passes):
            plan = self.step(revision, serves)
        return plan

    def settled(self, revision: str) -> bool:
        only = list(self.clusters.values())
        return (
            len(only) == 1 and only[0].revision == revision and only[0].replicas == self.desired
            and len(self.live) == self.desired
        )  # fmt: skip


def test_a_fresh_pool_asks_for_every_group_at_once() -> None:
    world = World(desired=3)
    world.run("r1")
    assert world.settled("r1") and world.max_groups == 3


def test_scale_down_drains_the_chosen_group_then_deletes_exactly_its_pods() -> None:
    world = World(desired=2)
    world.run("r1")
    world.min_serving = 10**6
    world.desired = 1
    plan = world.step("r1")
    assert plan.drain == (pc.group_id(POOL, "r1", 1),)  # the highest index
    assert world.clusters["rc-r1"].replicas == 2  # nothing removed before the drain is done
    world.run("r1")
    assert world.settled("r1") and world.min_serving >= 1
    assert world.stopped_serving == [pc.group_id(POOL, "r1", 1)]
    assert set(world.clusters["rc-r1"].pods) == {0}  # the kept group's pod stayed
    assert not world.requested and not world.drained  # bookkeeping cleared


@pytest.mark.parametrize(("desired", "surge"), [(1, 1), (3, 1), (3, 2), (4, 4)])
def test_a_rollout_moves_one_surge_at_a_time_and_never_dips(desired: int, surge: int) -> None:
    world = World(desired=desired, surge=surge)
    world.run("r1")
    world.min_serving, world.max_groups = 10**6, 0
    world.run("r2")
    assert world.settled("r2")
    assert world.min_serving >= desired and world.max_groups <= desired + surge


def test_a_new_revision_that_never_serves_leaves_the_old_one_serving_and_says_why() -> None:
    world = World(desired=2)
    world.run("r1")
    world.min_serving = 10**6
    plan = world.run("r2", serves=False)
    assert len(world.live) == 2 and all(g.startswith(f"{POOL}-r1-") for g in world.live)
    assert world.clusters["rc-r2"].replicas == 1 and not plan.drain  # one surge group, waiting
    assert world.min_serving >= 2 and plan.current_serving == 0


def test_an_edit_mid_rollout_and_a_revert_converge_without_a_dip() -> None:
    world = World(desired=2)
    world.run("r1")
    world.min_serving, world.max_groups = 10**6, 0
    world.step("r2", serves=False)  # r2's surge group is starting
    world.step("r2", serves=False)
    world.run("r3")  # edited again: r2 is an old revision now, its starting group leaves at once
    assert world.settled("r3") and world.min_serving >= 2 and world.max_groups <= 3
    world.step("r1")  # revert in the middle of the next rollout
    world.run("r3")
    assert world.settled("r3") and world.min_serving >= 2 and world.max_groups <= 3


def test_a_revert_while_the_old_revision_still_exists_makes_it_current_again() -> None:
    world = World(desired=2)
    world.run("r1")
    world.min_serving = 10**6
    world.step("r2", serves=False)
    world.run("r1")
    assert world.settled("r1") and "rc-r2" not in world.clusters and world.min_serving >= 2


def test_groups_that_are_down_reach_the_plan() -> None:
    views = [
        ClusterView("rc", "r1", True, 1, (), frozenset({"p"}),
                    (Slot(0, "g0", ("p",), SlotState.DOWN, "rank 0 died"),)),
    ]  # fmt: skip
    plan = plan_pool(1, 1, views)
    assert plan.down == ("group g0: rank 0 died",) and not plan.changes and plan.serving == 0


def test_an_old_group_whose_heartbeat_lapsed_is_drained_by_its_pool_not_killed() -> None:
    """A registered group that stopped answering for a moment (a busy machine) may still hold
    requests: its pods go only once its own pool has drained and stopped it."""
    old = Slot(0, "old-g0", ("p0",), SlotState.DOWN, "its heartbeat lapsed")
    new = Slot(0, "new-g0", ("q0",), SlotState.SERVING)
    views = [
        ClusterView("rc-new", "new", True, 1, (), frozenset({"q0"}), (new,)),
        ClusterView("rc-old", "old", False, 1, (), frozenset({"p0"}), (old,)),
    ]
    plan = plan_pool(1, 1, views)
    assert plan.drain == ("old-g0",) and not plan.delete and "rc-old" not in plan.changes
    never = Slot(0, "old-g0", ("p0",), SlotState.NEW)
    fresh = ClusterView("rc-old", "old", False, 1, (), frozenset({"p0"}), (never,))
    plan = plan_pool(1, 1, [views[0], fresh])
    assert plan.delete == ("rc-old",) and not plan.drain
