"""The true oracle: its dynamic program on small requirements, and the replayed schedule."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from moeplane.api.enums import Role
from moeplane.planner.config import SlaTargets
from moeplane.planner.sim.floor import trace_floor
from moeplane.planner.sim.oracle import (
    Requirements,
    SchedulePolicy,
    first_met,
    level_timeline,
    met_counts,
    oracle_schedule,
    pool_schedule,
    requirements,
)
from moeplane.planner.sim.scenario import EXAMPLE_MANIFEST, load_scenario, synthetic_traces
from moeplane.planner.sim.traces import LengthDist
from moeplane.planner.tick import LoadObservation, ObservedPool, TickInput

pytestmark = pytest.mark.unit
LENGTHS = LengthDist(2000, 0.6, 16, 16384)


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


def _requirements(met: np.ndarray, scored: int) -> Requirements:
    steps = met.shape[0]
    zeros = np.zeros(steps, dtype=np.int64)
    return Requirements(
        60.0, zeros, zeros, (1, met.shape[1] - 1), (1, met.shape[2] - 1), met.astype(np.int64), scored
    )


def test_met_counts_credit_each_request_from_the_smallest_size_it_met_at() -> None:
    # Sweeps at sizes 2..4: request 0 met from 3 on, request 1 only at 2 (credited from 2 on),
    # request 2 never (met only one past the sweep, index 3).
    store = {
        2: np.array([False, True, False]),
        3: np.array([True, False, False]),
        4: np.array([True] * 2 + [False]),
    }
    first = first_met(store, (2, 4))
    assert first.tolist() == [1, 0, 3]
    met = met_counts(np.array([0, 0, 1]), 2, (first, 4), (np.zeros(3, dtype=np.int64), 1))
    assert met[:, :, 0].tolist() == [[1, 2, 2, 2], [0, 0, 0, 1]]


def test_the_trace_floor_trades_misses_between_intervals_and_bounds_every_choice() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        steps, sizes = 3, 3  # sizes 1..3 per pool, the last meets all
        per = rng.integers(20, 60, steps)
        # met[k, p, d]: non-decreasing in p and d, all met at the largest sizes
        gains = rng.random((steps, sizes, sizes))
        met = np.minimum.accumulate(np.minimum.accumulate(gains[:, ::-1, ::-1], axis=1), axis=2)[
            :, ::-1, ::-1
        ]
        met = np.floor(met / met[:, -1:, -1:] * per[:, None, None]).astype(np.int64)
        req = _requirements(met, int(per.sum()))
        hours = np.ones(steps)
        floor = trace_floor(req, hours, (2, 3), 0.9)
        cost = np.add.outer(np.arange(1, sizes + 1) * 2, np.arange(1, sizes + 1) * 3)
        best_any = best_each = np.inf
        for pick in itertools.product(range(sizes * sizes), repeat=steps):
            chosen = [np.unravel_index(c, (sizes, sizes)) for c in pick]
            total = sum(int(cost[c]) for c in chosen)
            counts = [met[k][c] for k, c in enumerate(chosen)]
            if sum(counts) >= 0.9 * per.sum():
                best_any = min(best_any, total)
            if all(n >= 0.9 * p for n, p in zip(counts, per, strict=True)):
                best_each = min(best_each, total)
        # a lower bound on the cheapest choice meeting 90% over the trace, which is no dearer
        # than meeting it in every interval
        assert floor <= best_any + 1e-9 <= best_each + 1e-9
        assert floor >= 0.8 * best_any  # and not a trivial one on these small cases


def test_the_confirming_replays_raise_what_the_simulator_finds_short() -> None:
    """A program planned on requirements too low for some intervals (prefill halved over five
    scored minutes) falls short in the full simulator; the confirmation raises those intervals'
    requirements until every scored interval meets the target, and reports the replay."""
    scenario = load_scenario(EXAMPLE_MANIFEST, sla=SlaTargets(2000.0, 50.0, 99.0), warmup_s=300.0)
    trace = synthetic_traces(150.0, 1200.0, isl=LENGTHS, osl=LENGTHS, seed=3, warmup_s=300.0)["poisson"]
    args = (trace, scenario.prefill, scenario.decode, scenario.sim)
    swept = requirements(*args, guess=(1, 1))
    low = swept.prefill.copy()
    low[8:13] = np.maximum(1, low[8:13] // 2)
    assert np.any(low < swept.prefill)
    wrong = replace(swept, prefill=low)
    once = oracle_schedule(*args, swept=wrong, confirm_replays=1)
    assert once.replay is not None and once.replay.worst_interval_attainment < 0.99
    assert once.repairs == 0 and once.replays == 1

    fixed = oracle_schedule(*args, swept=wrong, confirm_replays=6)
    assert fixed.replay is not None and fixed.replay.worst_interval_attainment >= 0.99
    assert fixed.repairs > 0 and 1 < fixed.replays <= 6
    assert fixed.prefill_required is not None and np.all(fixed.prefill_required >= low)
    assert np.any(fixed.prefill_required[8:13] > low[8:13])
    assert fixed.replay.gpu_hours > once.replay.gpu_hours
    # The bound stays the program's on the requirements it was given, before any raise.
    assert fixed.gpu_hours_bound == once.gpu_hours_bound
