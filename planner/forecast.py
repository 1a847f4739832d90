"""What load to size for: the coming load (to grow for) and the recent loads (to shrink under).

- **Coming load.** The last interval as observed, its prompt mix the heavier of the last
  interval's and the scale-down window's (Mooncake's mix drifts to longer prompts: sizing on
  the window's mean alone left TTFT over target for minutes); on a confirmed rise (the rate went up
  `trend_intervals` intervals in a row) the predictor's forecast over the start-up horizon instead,
  times `1 + z × recent relative forecast error`, so groups started now serve the rise. Without a
  confirmed trend a forecast only adds noise: a burst is met by the scale-down window, which
  keeps what the last bursts needed.
- **Recent loads.** Every interval of the scale-down window, carried along a confirmed trend to
  now (a steady decline is followed at once, a burst pattern is held), each sized on its own:
  the pool shrinks only to what all of them need. Lengths and cache hits travel with each load,
  so an interval of long prompts counts as such.

Pure functions over the planner's state (`core.PlannerState`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from moeplane.planner.config import PlannerConfig
from moeplane.planner.tick import LoadForecast, LoadObservation, ObservedPool

if TYPE_CHECKING:
    from moeplane.planner.core import PlannerState


@dataclass(frozen=True)
class LoadPoint:
    """One observed interval, as the sizing functions read a load, and the decode pool as seen
    (the sequences it held outlast the interval's arrivals)."""

    at_s: float
    load: LoadForecast
    decode: ObservedPool | None = None


def as_forecast(load: LoadObservation) -> LoadForecast:
    return LoadForecast(
        arrival_rate_per_s=load.arrival_rate_per_s,
        peak_arrival_rate_per_s=load.peak_rate_per_s,
        isl_tokens=max(load.isl_tokens_mean, 1.0),
        osl_tokens=max(load.osl_tokens_mean, 1.0),
        isl_tokens_cv=load.isl_tokens_cv,
        osl_tokens_cv=load.osl_tokens_cv,
        cached_fraction=load.cached_fraction,
        prefill_service_s=load.prefill_service_s,
    )


def _relative_error_sq(previous: float | None, actual: float, old: float, alpha: float) -> float:
    if previous is None:
        return old
    rel = (actual - previous) / max(previous, actual, 1e-9)
    return (1 - alpha) * old + alpha * rel * rel


def observe(
    config: PlannerConfig,
    state: PlannerState,
    at_s: float,
    load: LoadObservation,
    decode: ObservedPool | None = None,
) -> PlannerState:
    """The state after this interval's observation: predictors, forecast error, history.

    Idle intervals update the rate but not the lengths (they mean nothing without requests), and
    carry the last lengths into the history."""
    a = config.forecast_error_alpha
    rate = load.arrival_rate_per_s
    state = replace(
        state,
        rate_error_sq=_relative_error_sq(state.last_rate_forecast, rate, state.rate_error_sq, a),
        rate=state.rate.update(rate),
        ticks=state.ticks + 1,
    )
    if rate > 0:
        state = replace(
            state,
            isl=state.isl.update(load.isl_tokens_mean),
            osl=state.osl.update(load.osl_tokens_mean),
            last_lengths=load,
        )
    lengths = state.last_lengths
    point = as_forecast(
        load
        if rate > 0 or lengths is None
        else replace(
            lengths,
            arrival_rate_per_s=rate,
            peak_arrival_rate_per_s=load.peak_arrival_rate_per_s,
        )
    )
    longest = max(
        config.prefill_scale_down_window_s,
        config.decode_scale_down_window_s,
        (max(config.trend_intervals, config.trend_intervals_down) + 1) * config.interval_s,
    )
    history = (*(p for p in state.history if at_s - p.at_s < longest), LoadPoint(at_s, point, decode))
    return replace(state, history=history, last_rate_forecast=state.rate.forecast(1))


def trend_per_interval(config: PlannerConfig, state: PlannerState, intervals: int | None = None) -> float:
    """The rate's slope (req/s per interval) when it moved the same way in each of the last
    `intervals` (default `trend_intervals`) intervals, by more than its noise; 0 otherwise."""
    n = config.trend_intervals if intervals is None else intervals
    rates = [p.load.arrival_rate_per_s for p in state.history[-(n + 1) :]]
    if len(rates) <= n:
        return 0.0
    steps = [b - a for a, b in itertools.pairwise(rates)]
    # Noise: a per-interval rate varies by sqrt(count) / interval at least (Poisson), and by as
    # much as its steps scatter around their mean.
    mean = sum(steps) / len(steps)
    scatter = math.sqrt(sum((s - mean) ** 2 for s in steps) / len(steps))
    noise = max(2.0 * math.sqrt(max(rates[-1], 1e-9) / config.interval_s), 2.0 * scatter)
    same_way = all(s > 0 for s in steps) or all(s < 0 for s in steps)
    return mean if same_way and abs(mean) > noise else 0.0


def rising_slope(config: PlannerConfig, state: PlannerState) -> float:
    """The rise per interval (the last step: a rise that speeds up or slows down is followed)
    when the rate went up in each of the last `trend_intervals` intervals by more than its
    Poisson noise, by steps of like size; else 0. A burst (one big step) is not a rise: the
    window's hold meets it."""
    n = config.trend_intervals
    rates = [p.load.arrival_rate_per_s for p in state.history]
    if len(rates) <= n:
        return 0.0
    recent = rates[-(n + 1) :]
    steps = [b - a for a, b in itertools.pairwise(recent)]
    noise = 2.0 * math.sqrt(max(rates[-1], 1e-9) / config.interval_s)
    if min(steps) <= noise or max(steps) > 6 * min(steps):
        return 0.0
    return steps[-1]


def mix_service_s(config: PlannerConfig, state: PlannerState) -> float | None:
    """The prompt mix's mean prefill time per request over the scale-down window (weighted by
    requests): one interval's few very long prompts are sampling noise, not a new mix."""
    window = config.prefill_scale_down_window_s
    now = state.history[-1].at_s if state.history else 0.0
    points = [
        p.load
        for p in state.history
        if now - p.at_s < max(window, config.interval_s) and p.load.prefill_service_s is not None
    ]
    weight = sum(p.arrival_rate_per_s for p in points)
    if not points or weight <= 0:
        return None
    return sum(p.arrival_rate_per_s * (p.prefill_service_s or 0.0) for p in points) / weight


def scaled(load: LoadForecast, factor: float) -> LoadForecast:
    """The load with its request rates times `factor` (lengths and mix unchanged)."""
    if factor == 1.0:
        return load
    return replace(
        load,
        arrival_rate_per_s=load.arrival_rate_per_s * factor,
        peak_arrival_rate_per_s=load.peak_arrival_rate_per_s * factor,
    )


def _with_mix(load: LoadForecast, service_s: float | None) -> LoadForecast:
    return load if service_s is None else replace(load, prefill_service_s=service_s)


def coming_load(config: PlannerConfig, state: PlannerState) -> tuple[LoadForecast, bool]:
    """(the load to grow for, whether it is a forecast on a confirmed rise)."""
    # Grow for the heavier of the window's prompt mix and the last interval's: a shift to longer
    # (or less cached) prompts is met now, while shrinking keeps reading the window's mean.
    mix = mix_service_s(config, state)
    recent = state.history[-1].load.prefill_service_s if state.history else None
    if mix is not None and recent is not None:
        mix = max(mix, recent)
    last = _with_mix(state.history[-1].load, mix) if state.history else LoadForecast(0.0, 0.0, 1.0, 1.0)
    slope = rising_slope(config, state)
    if slope <= 0:
        return last, False
    horizon = config.horizon_intervals
    ahead = max(
        last.arrival_rate_per_s + slope * horizon,
        max(state.rate.forecast(h) for h in range(1, horizon + 1)),
    )
    ahead *= 1 + config.forecast_margin_z * math.sqrt(state.rate_error_sq)
    scale = ahead / max(last.arrival_rate_per_s, 1e-9)
    isl = max(last.isl_tokens, state.isl.forecast(1))
    osl = max(last.osl_tokens, state.osl.forecast(1))
    return (
        replace(
            last,
            arrival_rate_per_s=ahead,
            peak_arrival_rate_per_s=last.peak_arrival_rate_per_s * scale,
            isl_tokens=max(isl, 1.0),
            osl_tokens=max(osl, 1.0),
        ),
        True,
    )


def recent_loads(
    config: PlannerConfig, state: PlannerState, window_s: float, now_s: float
) -> list[LoadForecast]:
    """The loads of the scale-down window, each carried along a confirmed decline to `now_s`
    (a rise never lowers them). A decline must last `trend_intervals_down` intervals: the end of
    a burst smeared over a few intervals must not pass for one."""
    slope = min(0.0, trend_per_interval(config, state, config.trend_intervals_down))
    mix = mix_service_s(config, state)
    out = []
    for p in state.history:
        if now_s - p.at_s >= window_s and p is not state.history[-1]:
            continue
        moved = slope * (now_s - p.at_s) / config.interval_s
        rate = max(0.0, p.load.arrival_rate_per_s + moved)
        scale = rate / p.load.arrival_rate_per_s if p.load.arrival_rate_per_s > 0 else 1.0
        out.append(
            _with_mix(
                replace(
                    p.load,
                    arrival_rate_per_s=rate,
                    peak_arrival_rate_per_s=p.load.peak_arrival_rate_per_s * scale,
                ),
                mix,
            )
        )
    return out


def recent_decode(state: PlannerState, window_s: float, now_s: float) -> list[ObservedPool]:
    """The decode pool as observed over the scale-down window."""
    return [p.decode for p in state.history if p.decode is not None and now_s - p.at_s < window_s]
