"""Scaling policies compared in replay: ours, static sizes, and a reactive threshold
autoscaler. The true oracle (`oracle.py`) and the Dynamo-style planner (`dynamo.py`) live
beside them.

Every policy answers `initial(first interval's load)` and `decide(tick) -> (prefill, decode)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from moeplane.api.enums import Role
from moeplane.planner.config import PlannerConfig
from moeplane.planner.core import Planner, groups_needed
from moeplane.planner.forecast import as_forecast
from moeplane.planner.sizing import PoolModels
from moeplane.planner.tick import Decision, LoadForecast, LoadObservation, ObservedPool, TickInput


class Policy(Protocol):
    name: str

    def initial(self, first: LoadObservation) -> tuple[int, int]: ...

    def decide(self, tick: TickInput) -> tuple[int, int]: ...


def size_for(models: PoolModels, config: PlannerConfig, load: LoadForecast) -> tuple[int, int]:
    """Groups the performance model asks for at this load, within the bounds (no correction)."""
    return groups_needed(config, models, load)


def _as_forecast(load: LoadObservation) -> LoadForecast:
    return as_forecast(load)


def _warm_tick(load: LoadObservation, p: int, d: int) -> TickInput:
    return TickInput(0.0, load, ObservedPool(Role.PREFILL, p), ObservedPool(Role.DECODE, d))


@dataclass
class PlannerPolicy:
    """Our planner: the core with its predictor, margin and correction."""

    config: PlannerConfig
    models: PoolModels
    name: str = "ours"
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.planner = Planner(self.config, self.models)

    def initial(self, first: LoadObservation) -> tuple[int, int]:
        p, d = size_for(self.models, self.config, _as_forecast(first))
        self.planner.on_tick(_warm_tick(first, p, d))  # the predictors start from the first interval
        return p, d

    def decide(self, tick: TickInput) -> tuple[int, int]:
        decision = self.planner.on_tick(tick)
        self.decisions.append(decision)
        return decision.prefill.desired_groups, decision.decode.desired_groups


@dataclass
class StaticPolicy:
    """Fixed sizes throughout (the bench's static-peak: the least sizes meeting the SLA in every
    interval, from the oracle's requirement sweep)."""

    name: str
    prefill_groups: int
    decode_groups: int

    def initial(self, first: LoadObservation) -> tuple[int, int]:
        return self.prefill_groups, self.decode_groups

    def decide(self, tick: TickInput) -> tuple[int, int]:
        return self.prefill_groups, self.decode_groups


@dataclass
class ReactivePolicy:
    """An HPA-style threshold autoscaler on observed metrics only: one group up when a pool's
    latency misses the SLA or its utilization passes `up_utilization`; one group down after
    `cooldown_s` when utilization is under `down_utilization` and latency is well inside."""

    config: PlannerConfig
    models: PoolModels
    up_utilization: float = 0.8
    down_utilization: float = 0.5
    name: str = "reactive"

    def __post_init__(self) -> None:
        self._changed_at: dict[Role, float] = {}

    def initial(self, first: LoadObservation) -> tuple[int, int]:
        return size_for(self.models, self.config, _as_forecast(first))

    def _one(self, obs: ObservedPool, target_ms: float, at_s: float) -> int:
        groups = obs.groups
        util = obs.utilization or 0.0
        late = obs.latency_ms is not None and obs.latency_ms > target_ms
        if late or util > self.up_utilization:
            groups += 1
        elif (
            util < self.down_utilization
            and (obs.latency_ms or 0.0) < 0.5 * target_ms
            and at_s - self._changed_at.get(obs.role, -math.inf) >= self.config.cooldown_s
        ):
            groups -= 1
        groups = self.config.bounds(obs.role).clamp(groups)
        if groups != obs.groups:
            self._changed_at[obs.role] = at_s
        return groups

    def decide(self, tick: TickInput) -> tuple[int, int]:
        sla = self.config.sla
        return (
            self._one(tick.prefill, sla.ttft_ms, tick.at_s),
            self._one(tick.decode, sla.itl_ms, tick.at_s),
        )
