"""The true oracle: its dynamic program on small requirements, and the replayed schedule."""

from __future__ import annotations

import numpy as np
import pytest
from moeplane.api.enums import Role
from moeplane.planner.sim.oracle import SchedulePolicy, level_timeline, pool_schedule
from moeplane.planner.tick import LoadObservation, ObservedPool, TickInput

pytestmark = pytest.mark.unit


def held(
    required: list[int], startup: int = 2, drain: float = 0.0, weight: list[float] | None = None
) -> list[int]:
    r = np.asarray(required)
    w = np.ones(len(r)) if weight is None else np.asarray(weight, dtype=float)
    return pool_schedule(r, startup, drain, w).tolist()


def test_groups_start_ahead_of_need_and_short_gaps_are_bridged() -> None:
    # A second group needed at 5..6: asked for at 3 (start-up 2), held through 6.
    assert held([1, 1, 1, 1, 1, 2, 2, 1, 1, 1]) == [1, 1, 1, 2, 2, 2, 2, 1, 1, 1]
    # A gap of 2 between two needs costs 2 held intervals; a restart costs 2 of start-up: bridged.
    assert held([1, 1, 2, 1, 1, 2, 1, 1, 1, 1]) == [2, 2, 2, 2, 2, 2, 1, 1, 1, 1]
    # A long gap: stop and start again ahead of the next need.
    assert held([2, 1, 1, 1, 1, 1, 1, 2, 1]) == [2, 1, 1, 1, 1, 2, 2, 2, 1]


def test_a_drain_cost_keeps_groups_through_gaps_it_would_cost_to_leave() -> None:
    need = [2, 1, 1, 1, 1, 1, 2, 1]
    assert held(need, drain=0.0) == [2, 1, 1, 1, 2, 2, 2, 1]
    assert held(need, drain=4.0) == [2] * 8  # stopping costs more than staying, to the end


def test_the_schedule_costs_between_the_need_and_holding_the_peak() -> None:
    rng = np.random.default_rng(9)
    for _ in range(10):
        need = rng.integers(0, 6, 40)
        weight = np.ones(40)
        weight[:5] = 0.0  # a warm-up nobody pays for
        schedule = pool_schedule(need, 2, 1.0, weight)
        assert np.all(schedule >= need)
        assert np.sum(need * weight) <= np.sum(schedule * weight) <= need.max() * weight.sum()
    # A level needed at interval 1 with start-up 2 can only be there from the start.
    assert held([0, 1, 0, 0, 0, 0]) == [1, 1, 0, 0, 0, 0]


def test_every_level_serves_wherever_it_is_required() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        need = rng.integers(0, 5, 30)
        for level in range(1, int(need.max()) + 1):
            states = level_timeline(need >= level, 2, 0.5, np.ones(30))
            assert np.all(states[need >= level])  # held (serving) wherever the level is needed


def test_the_schedule_policy_replays_held_groups_by_interval() -> None:
    policy = SchedulePolicy(np.array([3, 4, 5]), np.array([1, 1, 2]), 60.0)
    load = LoadObservation(1.0, 1.0, 1.0)
    assert policy.initial(load) == (3, 1)
    tick = TickInput(120.0, load, ObservedPool(Role.PREFILL, 3), ObservedPool(Role.DECODE, 1))
    assert policy.decide(tick) == (5, 2)
