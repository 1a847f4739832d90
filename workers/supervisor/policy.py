"""The supervisor's decisions, pure: when to restart a failed group, when to give up, which groups a
resize starts and drains, and the incarnation numbers that fence stale registrations.

Restart rule: a group that fails is restarted as a unit after a backoff that doubles with every
failure in a row (`initial_backoff_s`, 2x, 4x, ... capped at `max_backoff_s`). A run that stayed
live for `stable_s` ends the streak. The `max_restarts + 1`-th failure in a row marks the group
failed (its reason goes to the registry, hence /health, MoEPool status and the dashboard); a
failed group is tried again after `failed_retry_s`, with a fresh streak. A start that fails (the
ranks never came up) counts as a failure of the streak like a crash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum


class PolicyError(ValueError):
    """A restart policy that cannot work (names the field)."""


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 3  # restarts in a row before the group is marked failed
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    stable_s: float = 60.0  # live this long: the next failure starts a new streak
    failed_retry_s: float = 300.0  # a failed group is tried again after this long

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise PolicyError(f"max_restarts must be >= 0, got {self.max_restarts}")
        for name in ("initial_backoff_s", "max_backoff_s", "stable_s", "failed_retry_s"):
            if getattr(self, name) < 0:
                raise PolicyError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_backoff_s < self.initial_backoff_s:
            raise PolicyError(
                f"max_backoff_s ({self.max_backoff_s}) must be >= initial_backoff_s "
                f"({self.initial_backoff_s})"
            )

    def backoff_s(self, failures: int) -> float:
        """The wait before the restart that follows the `failures`-th failure in a row (>= 1)."""
        return min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** max(0, failures - 1))


class Verdict(StrEnum):
    RESTART = "restart"
    GIVE_UP = "give_up"


@dataclass
class RestartStreak:
    """Failures in a row of one group, and when it last became live."""

    failures: int = 0
    live_since_s: float | None = None  # monotonic

    def on_live(self, now_s: float) -> None:
        self.live_since_s = now_s

    def on_failure(self, policy: RestartPolicy, now_s: float) -> Verdict:
        """Count a failure at `now_s`; RESTART, or GIVE_UP past `policy.max_restarts`."""
        if self.live_since_s is not None and now_s - self.live_since_s >= policy.stable_s:
            self.failures = 0  # it had been serving long enough: a new streak
        self.live_since_s = None
        self.failures += 1
        return Verdict.GIVE_UP if self.failures > policy.max_restarts else Verdict.RESTART

    def reset(self) -> None:
        self.failures = 0


@dataclass(frozen=True)
class ResizePlan:
    start: tuple[int, ...]  # indices of groups to start
    drain: tuple[int, ...]  # indices of groups to drain, then stop


def resize_plan(running: set[int] | frozenset[int], desired: int) -> ResizePlan:
    """Groups 0..desired-1 should run: start the lowest missing indices, drain the highest extra ones.

    Indices are stable names (`{pool}-{index}`), so a group that restarts keeps its name and a
    pool that shrinks and grows again reuses the low ones."""
    if desired < 0:
        raise PolicyError(f"desired groups must be >= 0, got {desired}")
    ordered = sorted(running)
    drain = tuple(sorted(ordered[desired:], reverse=True)) if len(ordered) > desired else ()
    missing = desired - len(ordered) if len(ordered) < desired else 0
    start: list[int] = []
    i = 0
    while len(start) < missing:
        if i not in running:
            start.append(i)
        i += 1
    return ResizePlan(tuple(start), drain)


def next_incarnation(previous: int, now_ns: int | None = None) -> int:
    """An incarnation above `previous` and, across supervisor restarts, above any earlier one:
    microseconds of wall clock (exact in Redis's Lua doubles until the year 2255)."""
    now_us = (time.time_ns() if now_ns is None else now_ns) // 1000
    return max(previous + 1, now_us)
