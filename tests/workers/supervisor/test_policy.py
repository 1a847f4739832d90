"""The supervisor's pure rules: backoff and giving up, which groups a resize starts and drains, and
incarnations that only grow."""

from __future__ import annotations

import pytest
from moeplane.workers.supervisor.policy import (
    PolicyError,
    ResizePlan,
    RestartPolicy,
    RestartStreak,
    Verdict,
    next_incarnation,
    resize_plan,
)

pytestmark = pytest.mark.unit


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(initial_backoff_s=0.5, max_backoff_s=3.0)
    assert [policy.backoff_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(PolicyError, match="max_backoff_s"):
        RestartPolicy(initial_backoff_s=2.0, max_backoff_s=1.0)
    with pytest.raises(PolicyError, match="max_restarts"):
        RestartPolicy(max_restarts=-1)


def test_failures_in_a_row_give_up_and_a_stable_run_starts_a_new_streak() -> None:
    policy = RestartPolicy(max_restarts=2, stable_s=60.0)
    streak = RestartStreak()
    t = 1000.0
    assert streak.on_failure(policy, t) is Verdict.RESTART
    streak.on_live(t + 5)
    assert streak.on_failure(policy, t + 10) is Verdict.RESTART  # live only 5 s: same streak
    streak.on_live(t + 15)
    assert streak.on_failure(policy, t + 20) is Verdict.GIVE_UP
    assert streak.failures == 3
    streak.reset()
    streak.on_live(t + 100)
    streak.on_failure(policy, t + 200)
    streak.on_live(t + 300)
    assert streak.on_failure(policy, t + 361) is Verdict.RESTART  # served 61 s: a fresh streak
    assert streak.failures == 1
    # A start that never went live counts like a crash.
    assert streak.on_failure(policy, t + 362) is Verdict.RESTART
    assert streak.on_failure(policy, t + 363) is Verdict.GIVE_UP


@pytest.mark.parametrize(
    ("running", "desired", "plan"),
    [
        (set(), 2, ResizePlan((0, 1), ())),
        ({0, 1, 2}, 1, ResizePlan((), (2, 1))),
        ({0, 2}, 3, ResizePlan((1,), ())),
        ({0, 2, 5}, 2, ResizePlan((), (5,))),
        ({0, 1}, 2, ResizePlan((), ())),
        ({1}, 0, ResizePlan((), (1,))),
    ],
)
def test_resize_starts_the_lowest_free_and_drains_the_highest(running, desired, plan) -> None:
    assert resize_plan(frozenset(running), desired) == plan


def test_incarnations_only_grow() -> None:
    assert next_incarnation(5, now_ns=1_000) == 6  # the clock behind: still above the last one
    assert next_incarnation(5, now_ns=9_000_000) == 9_000
    a = next_incarnation(0)
    assert next_incarnation(a) > a
