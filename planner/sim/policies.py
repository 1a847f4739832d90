"""Scaling policies compared in replay: ours, static for the peak or the mean, a reactive
threshold autoscaler, and an oracle that knows each interval's load in advance.

Every policy answers `initial(first interval's load)` and `decide(tick) -> (prefill, decode)`.
The static policies and the oracle size with the same performance model as ours, so the
comparison isolates prediction (oracle vs ours) and planning (ours vs static and reactive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

from moeplane.api.enums import Role
from moeplane.planner.config import PlannerConfig
from moeplane.planner.core import Planner
from moeplane.planner.sim.traces import Trace
from moeplane.planner.sizing import PoolModels, size_decode, size_prefill
from moeplane.planner.tick import Decision, LoadForecast, LoadObservation, PoolObservation, TickInput


class Policy(Protocol):
    name: str

    def initial(self, first: LoadObservation) -> tuple[int, int]: ...

    def decide(self, tick: TickInput) -> tuple[int, int]: ...


def size_for(models: PoolModels, config: PlannerConfig, load: LoadForecast) -> tuple[int, int]:
    """Groups the performance model asks for at this load, within the bounds (no correction)."""
    p = size_prefill(models, config, load, 1.0).groups
    d = size_decode(models, config, load, 1.0).groups
    p = config.prefill_bounds.clamp(p if p is not None else config.prefill_bounds.max_groups or 1)
    d = config.decode_bounds.clamp(d if d is not None else config.decode_bounds.max_groups or 1)
    return p, d


def _as_forecast(load: LoadObservation) -> LoadForecast:
    return LoadForecast(
        load.arrival_rate_per_s,
        load.peak_rate_per_s,
        max(load.isl_tokens_mean, 1.0),
        max(load.osl_tokens_mean, 1.0),
        load.isl_tokens_cv,
        load.osl_tokens_cv,
    )


def _warm_tick(load: LoadObservation, p: int, d: int) -> TickInput:
    return TickInput(0.0, load, PoolObservation(Role.PREFILL, p), PoolObservation(Role.DECODE, d))


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
class OraclePolicy:
    """Knows the load of the coming intervals (up to start-up time ahead): the same core, sized
    on the truth instead of a forecast, without cooldown or step limits."""

    config: PlannerConfig
    models: PoolModels
    trace: Trace
    peak_window_s: float
    name: str = "oracle"

    def __post_init__(self) -> None:
        self.config = replace(self.config, cooldown_s=0.0, max_step_groups=10**6, forecast_margin_z=0.0)
        self.planner = Planner(self.config, self.models)

    def known(self, at_s: float) -> LoadForecast:
        interval = self.config.interval_s
        horizon = 1 + math.ceil(self.config.startup_s / interval)
        loads = [
            self.trace.load_between(at_s + i * interval, at_s + (i + 1) * interval, self.peak_window_s)
            for i in range(horizon)
        ]
        busy = [x for x in loads if x.arrival_rate_per_s > 0] or loads[:1]
        weight = sum(x.arrival_rate_per_s for x in busy) or 1.0
        return LoadForecast(
            arrival_rate_per_s=max(x.arrival_rate_per_s for x in busy),
            peak_arrival_rate_per_s=max(x.peak_rate_per_s for x in busy),
            isl_tokens=max(1.0, sum(x.isl_tokens_mean * x.arrival_rate_per_s for x in busy) / weight),
            osl_tokens=max(1.0, sum(x.osl_tokens_mean * x.arrival_rate_per_s for x in busy) / weight),
            isl_tokens_cv=max(x.isl_tokens_cv for x in busy),
            osl_tokens_cv=max(x.osl_tokens_cv for x in busy),
        )

    def initial(self, first: LoadObservation) -> tuple[int, int]:
        return size_for(self.models, self.config, self.known(0.0))

    def decide(self, tick: TickInput) -> tuple[int, int]:
        decision = self.planner.on_tick(tick, known_load=self.known(tick.at_s))
        return decision.prefill.desired_groups, decision.decode.desired_groups


@dataclass
class StaticPolicy:
    name: str
    prefill_groups: int
    decode_groups: int

    @classmethod
    def for_peak(
        cls, config: PlannerConfig, models: PoolModels, loads: list[LoadObservation]
    ) -> StaticPolicy:
        busy = [x for x in loads if x.arrival_rate_per_s > 0]
        top = max(busy, key=lambda x: x.arrival_rate_per_s)
        load = LoadForecast(
            top.arrival_rate_per_s,
            max(x.peak_rate_per_s for x in busy),
            max(x.isl_tokens_mean for x in busy),
            max(x.osl_tokens_mean for x in busy),
            max(x.isl_tokens_cv for x in busy),
            max(x.osl_tokens_cv for x in busy),
        )
        return cls("static-peak", *size_for(models, config, load))

    @classmethod
    def for_mean(
        cls, config: PlannerConfig, models: PoolModels, loads: list[LoadObservation]
    ) -> StaticPolicy:
        busy = [x for x in loads if x.arrival_rate_per_s > 0]
        n, rate = len(busy), sum(x.arrival_rate_per_s for x in busy)
        load = LoadForecast(
            rate / n,
            sum(x.peak_rate_per_s for x in busy) / n,
            sum(x.isl_tokens_mean * x.arrival_rate_per_s for x in busy) / rate,
            sum(x.osl_tokens_mean * x.arrival_rate_per_s for x in busy) / rate,
            sum(x.isl_tokens_cv for x in busy) / n,
            sum(x.osl_tokens_cv for x in busy) / n,
        )
        return cls("static-mean", *size_for(models, config, load))

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

    def _one(self, obs: PoolObservation, target_ms: float, at_s: float) -> int:
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
