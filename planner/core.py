"""The planner core: `on_tick(config, models, state, tick) -> Decision`, with no I/O.

Each tick:
1. **Observe**: feed the interval's arrival rate, peak rate, ISL and OSL to the predictors, and
   score the previous forecasts (their relative error sets the forecast margin).
2. **Correct**: observed latency over the model's prediction at the observed load, smoothed and
   clamped, per pool.
3. **Predict**: the highest forecast over the next `1 + startup_s / interval_s` intervals (new
   groups must be up when the load comes), times the margin.
4. **Size** each pool with the performance model (`sizing.py`).
5. **Constrain**: in-flight floor, bounds, cooldown, step limit, GPU budget.

The state is an immutable value returned inside the decision, so live runs, the replay
simulator and what-if previews can fork it freely. `Planner` is a small holder for live use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from moeplane.api.enums import Role
from moeplane.planner.config import PlannerConfig
from moeplane.planner.perf.capacity import decode_context_tokens, decode_itl_s, prefill_request_times
from moeplane.planner.predictors import LoadPredictor, make_predictor
from moeplane.planner.sizing import (
    PoolModels,
    constrain_pool,
    estimated_itl_ms,
    estimated_ttft_ms,
    fit_budget,
    in_flight_minimum,
    size_decode,
    size_prefill,
)
from moeplane.planner.tick import (
    Decision,
    LoadForecast,
    PoolDecision,
    Reason,
    ReasonCode,
    TickInput,
)

_RATIO_CLAMP = (0.5, 2.0)  # one interval's observed/predicted ratio, before smoothing
_CV_ALPHA = 0.3  # smoothing of the length variability


@dataclass(frozen=True)
class PlannerState:
    rate: LoadPredictor
    peak: LoadPredictor
    isl: LoadPredictor
    osl: LoadPredictor
    isl_cv: float = 0.0
    osl_cv: float = 0.0
    rate_error_sq: float = 0.0  # smoothed squared relative error of the one-step rate forecast
    peak_error_sq: float = 0.0
    last_rate_forecast: float | None = None
    last_peak_forecast: float | None = None
    prefill_correction: float = 1.0
    decode_correction: float = 1.0
    prefill_changed_at_s: float | None = None
    decode_changed_at_s: float | None = None
    prefill_settled: bool = False  # the prefill queue was short at the previous tick
    # (at_s, prefill groups, decode groups) sized within the scale-down window
    recent_sized: tuple[tuple[float, int, int], ...] = ()
    ticks: int = 0

    def correction(self, role: Role) -> float:
        return self.prefill_correction if role is Role.PREFILL else self.decode_correction

    def changed_at_s(self, role: Role) -> float | None:
        return self.prefill_changed_at_s if role is Role.PREFILL else self.decode_changed_at_s


def initial_state(config: PlannerConfig) -> PlannerState:
    return PlannerState(
        rate=make_predictor(config.predictor),
        peak=make_predictor(config.predictor),
        isl=make_predictor(config.predictor),
        osl=make_predictor(config.predictor),
    )


def _error_sq(previous: float | None, actual: float, old: float, alpha: float) -> float:
    if previous is None:
        return old
    rel = (actual - previous) / max(previous, actual, 1e-9)
    return (1 - alpha) * old + alpha * rel * rel


def observe(config: PlannerConfig, state: PlannerState, tick: TickInput) -> PlannerState:
    """Step 1: the predictors and forecast errors after this tick's observation."""
    load = tick.load
    a = config.forecast_error_alpha
    state = replace(
        state,
        rate_error_sq=_error_sq(state.last_rate_forecast, load.arrival_rate_per_s, state.rate_error_sq, a),
        peak_error_sq=_error_sq(state.last_peak_forecast, load.peak_rate_per_s, state.peak_error_sq, a),
        rate=state.rate.update(load.arrival_rate_per_s),
        peak=state.peak.update(load.peak_rate_per_s),
        ticks=state.ticks + 1,
    )
    if load.arrival_rate_per_s > 0:  # lengths mean nothing in an idle interval
        first = state.isl.observations == 0
        a_cv = 1.0 if first else _CV_ALPHA
        state = replace(
            state,
            isl=state.isl.update(load.isl_tokens_mean),
            osl=state.osl.update(load.osl_tokens_mean),
            isl_cv=(1 - a_cv) * state.isl_cv + a_cv * load.isl_tokens_cv,
            osl_cv=(1 - a_cv) * state.osl_cv + a_cv * load.osl_tokens_cv,
        )
    return replace(
        state, last_rate_forecast=state.rate.forecast(1), last_peak_forecast=state.peak.forecast(1)
    )


def _smoothed(config: PlannerConfig, old: float, ratio: float) -> float:
    lo, hi = _RATIO_CLAMP
    value = (1 - config.correction_alpha) * old + config.correction_alpha * min(hi, max(lo, ratio))
    return min(config.correction_max, max(config.correction_min, value))


def correct(config: PlannerConfig, models: PoolModels, state: PlannerState, tick: TickInput) -> PlannerState:
    """Step 2: corrections from what was observed against what the model predicted.

    Prefill: the busy share of rank time against the model's (service time, and it still reads
    when the pool is saturated), and the TTFT against the model's while the queue is short (a
    backlog left by an earlier shortage is not a model error); the larger ratio counts. Decode:
    the ITL against the model's at the batch the pool actually ran.
    """
    load = tick.load
    prefill, decode = state.prefill_correction, state.decode_correction
    p_obs, d_obs = tick.prefill, tick.decode
    lanes = p_obs.ready_groups * models.prefill.dp_ranks
    settled = p_obs.queued_requests <= lanes and (p_obs.utilization is None or p_obs.utilization < 0.95)
    if load.arrival_rate_per_s > 0 and lanes:
        ratios = []
        service = prefill_request_times(
            models.prefill, max(load.isl_tokens_mean, 1.0), config.prefill_batch_tokens
        )
        predicted_util = load.arrival_rate_per_s * service.service_s / lanes
        # Where the model itself expects saturation the ratio says nothing about service time.
        if p_obs.utilization is not None and 0.05 < predicted_util < 0.95:
            ratios.append(p_obs.utilization / predicted_util)
        if settled and state.prefill_settled and p_obs.latency_ms is not None:
            seen = LoadForecast(
                arrival_rate_per_s=load.arrival_rate_per_s,
                peak_arrival_rate_per_s=load.peak_rate_per_s,
                isl_tokens=load.isl_tokens_mean,
                osl_tokens=load.osl_tokens_mean,
                isl_tokens_cv=load.isl_tokens_cv,
            )
            predicted = estimated_ttft_ms(models, config, seen, p_obs.ready_groups)
            if math.isfinite(predicted) and predicted > 0:
                ratios.append(p_obs.latency_ms / predicted)
        if ratios:
            prefill = _smoothed(config, prefill, max(ratios))
    ranks = d_obs.ready_groups * models.decode.dp_ranks
    if d_obs.running_requests and ranks and state.isl.observations and d_obs.latency_ms is not None:
        ctx = decode_context_tokens(state.isl.forecast(1), state.osl.forecast(1), state.osl_cv)
        predicted = decode_itl_s(models.decode, d_obs.running_requests / ranks, ctx) * 1e3
        decode = _smoothed(config, decode, d_obs.latency_ms / predicted)
    return replace(state, prefill_correction=prefill, decode_correction=decode, prefill_settled=settled)


def forecast(config: PlannerConfig, state: PlannerState) -> LoadForecast:
    """Step 3: the load to size for, over the start-up horizon, with the error margin."""
    horizon = 1 + math.ceil(config.startup_s / config.interval_s)
    rate = max(state.rate.forecast(h) for h in range(1, horizon + 1))
    peak = max(state.peak.forecast(h) for h in range(1, horizon + 1))
    z = config.forecast_margin_z
    rate *= 1 + z * math.sqrt(state.rate_error_sq)
    peak *= 1 + z * math.sqrt(state.peak_error_sq)
    isl = state.isl.forecast(1) if state.isl.observations else 1.0
    osl = state.osl.forecast(1) if state.osl.observations else 1.0
    return LoadForecast(rate, max(peak, rate), max(isl, 1.0), max(osl, 1.0), state.isl_cv, state.osl_cv)


def _sized(
    config: PlannerConfig,
    models: PoolModels,
    role: Role,
    load: LoadForecast,
    correction: float,
    current: int,
    reasons: list[Reason],
) -> int:
    """Step 4 for one pool: groups for the load, or the most allowed when no size meets the SLA."""
    sizer = size_prefill if role is Role.PREFILL else size_decode
    sized = sizer(models, config, load, correction).groups
    if sized is None:
        top = config.bounds(role).max_groups
        wanted = top if top is not None else current + config.max_step_groups
        reasons.append(
            Reason(ReasonCode.INFEASIBLE, f"no pool size meets the SLA; asking for {wanted}", role)
        )
        return wanted
    reasons.append(Reason(ReasonCode.SIZED, f"{sized} groups for the forecast", role))
    return sized


def _with_backlog(
    config: PlannerConfig,
    models: PoolModels,
    load: LoadForecast,
    correction: float,
    queued: int,
    reasons: list[Reason],
) -> int:
    """Prefill groups that also drain the queue within one interval. A backlog is a transient:
    the scale-down window does not remember it."""
    drain_s = config.interval_s
    extra = queued / drain_s
    reasons.append(
        Reason(
            ReasonCode.BACKLOG,
            f"+{extra:.2f} req/s to drain {queued} queued requests within {drain_s:.0f}s",
            Role.PREFILL,
        )
    )
    bigger = replace(load, peak_arrival_rate_per_s=load.peak_arrival_rate_per_s + extra)
    return _sized(config, models, Role.PREFILL, bigger, correction, 0, [])


def on_tick(
    config: PlannerConfig,
    models: PoolModels,
    state: PlannerState,
    tick: TickInput,
    *,
    known_load: LoadForecast | None = None,
) -> Decision:
    """One planning decision. `known_load` replaces the forecast (the replay oracle, what-if)."""
    state = observe(config, state, tick)
    state = correct(config, models, state, tick)
    load = known_load if known_load is not None else forecast(config, state)
    reasons = [
        Reason(
            ReasonCode.FORECAST,
            f"{'known' if known_load is not None else 'forecast'} {load.arrival_rate_per_s:.2f} req/s "
            f"(peak {load.peak_arrival_rate_per_s:.2f}), ISL {load.isl_tokens:.0f}, "
            f"OSL {load.osl_tokens:.0f} "
            f"-> {load.input_tokens_per_s:.0f} input tokens/s",
        )
    ]
    desired: dict[Role, int] = {}
    sized_groups: dict[Role, int] = {}
    longest = max(config.prefill_scale_down_window_s, config.decode_scale_down_window_s)
    recent = [e for e in state.recent_sized if tick.at_s - e[0] < longest]
    for role in (Role.PREFILL, Role.DECODE):
        obs, corr = tick.pool(role), state.correction(role)
        if abs(corr - 1) > 0.02:
            reasons.append(Reason(ReasonCode.CORRECTION, f"latency correction x{corr:.2f}", role))
        sized_groups[role] = _sized(config, models, role, load, corr, obs.groups, reasons)
        wanted = sized_groups[role]
        if role is Role.PREFILL and tick.prefill.queued_requests:
            wanted = max(
                wanted, _with_backlog(config, models, load, corr, tick.prefill.queued_requests, reasons)
            )
        window = config.scale_down_window_s(role)
        held = max(
            (int(e[1] if role is Role.PREFILL else e[2]) for e in recent if tick.at_s - e[0] < window),
            default=0,
        )
        if held > wanted:
            reasons.append(
                Reason(
                    ReasonCode.STABILIZED,
                    f"held at {held} groups, the most asked for in the last {window:.0f}s (sized {wanted})",
                    role,
                )
            )
            wanted = held
        groups, why = constrain_pool(
            config,
            role,
            current=obs.groups,
            wanted=wanted,
            floor=in_flight_minimum(models, obs, load),
            last_change_at_s=state.changed_at_s(role),
            at_s=tick.at_s,
        )
        desired[role] = groups
        reasons.extend(why)
    p, d, why = fit_budget(config, models, desired[Role.PREFILL], desired[Role.DECODE])
    desired = {Role.PREFILL: p, Role.DECODE: d}
    reasons.extend(why)

    pools: dict[Role, PoolDecision] = {}
    for role in (Role.PREFILL, Role.DECODE):
        obs, corr, groups = tick.pool(role), state.correction(role), desired[role]
        if role is Role.PREFILL:
            latency = estimated_ttft_ms(models, config, load, groups, corr)
        else:
            latency = estimated_itl_ms(models, load, groups, corr)
        pools[role] = PoolDecision(
            role=role,
            current_groups=obs.groups,
            sized_groups=sized_groups[role],
            desired_groups=groups,
            nodes_per_group=models.nodes_per_group(role),
            gpus_per_group=models.gpus_per_group(role),
            correction=corr,
            estimated_latency_ms=latency,
        )
        if groups == obs.groups:
            reasons.append(Reason(ReasonCode.HOLD, f"stays at {groups} groups", role))
    recent.append((tick.at_s, sized_groups[Role.PREFILL], sized_groups[Role.DECODE]))
    state = replace(
        state,
        recent_sized=tuple(recent),
        prefill_changed_at_s=tick.at_s if pools[Role.PREFILL].changed else state.prefill_changed_at_s,
        decode_changed_at_s=tick.at_s if pools[Role.DECODE].changed else state.decode_changed_at_s,
    )
    return Decision(tick.at_s, load, pools[Role.PREFILL], pools[Role.DECODE], tuple(reasons), state)


class Planner:
    """Holds config, models and state for a live loop: `planner.on_tick(tick)`."""

    def __init__(self, config: PlannerConfig, models: PoolModels, state: PlannerState | None = None) -> None:
        self.config, self.models = config, models
        self.state = state or initial_state(config)

    def on_tick(self, tick: TickInput, *, known_load: LoadForecast | None = None) -> Decision:
        decision = on_tick(self.config, self.models, self.state, tick, known_load=known_load)
        self.state = decision.state
        return decision
