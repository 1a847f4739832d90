"""Online correction: how much slower (or faster) the pools serve than the performance model says.

The correction scales the model's step times (`sizing.corrected`), so queueing sees the slower
service. It is measured on service time, never on queueing, so a backlog or a burst never
teaches it anything:

- prefill: the measured service time of the requests served against the model's for the same
  requests (where the back end measures it per request), else the busy share of the pool's
  ranks against the model's share for the observed load (when reported, neither idle nor
  saturated), else the mean TTFT against the model's median while the queue stayed short;
- decode: the mean ITL against the model's ITL at the batch per rank the pool actually ran.

Each interval's ratio is clamped to [0.5, 2], smoothed (`correction_alpha`) and kept within
[`correction_min`, `correction_max`].
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from moeplane.planner.config import PlannerConfig
from moeplane.planner.perf.capacity import decode_context_tokens, decode_itl_s, mean_service_s
from moeplane.planner.sizing import PoolModels, estimated_ttft_ms
from moeplane.planner.tick import LoadForecast, TickInput

if TYPE_CHECKING:
    from moeplane.planner.core import PlannerState

_RATIO_CLAMP = (0.5, 2.0)


def _smoothed(config: PlannerConfig, old: float, ratio: float) -> float:
    lo, hi = _RATIO_CLAMP
    value = (1 - config.correction_alpha) * old + config.correction_alpha * min(hi, max(lo, ratio))
    return min(config.correction_max, max(config.correction_min, value))


def prefill_ratio(
    config: PlannerConfig, models: PoolModels, state: PlannerState, tick: TickInput
) -> float | None:
    load, obs = tick.load, tick.prefill
    lanes = obs.ready_groups * models.prefill.dp_ranks
    if load.arrival_rate_per_s <= 0 or not lanes:
        return None
    isl = max(load.isl_tokens_mean, 1.0)
    cached = min(load.cached_fraction, 0.99)
    if obs.service_ratio is not None:
        return obs.service_ratio
    if obs.utilization is not None:
        service = load.prefill_service_s or mean_service_s(
            models.prefill, isl, load.isl_tokens_cv, config.prefill_batch_tokens, cached
        )
        predicted = load.arrival_rate_per_s * service / lanes
        if 0.05 < predicted < 0.9 and obs.utilization < 0.95:
            return obs.utilization / predicted
        return None
    settled = obs.queued_requests <= lanes
    if settled and state.prefill_settled and obs.mean_latency_ms is not None:
        seen = LoadForecast(
            load.arrival_rate_per_s,
            load.peak_rate_per_s,
            isl,
            max(load.osl_tokens_mean, 1.0),
            load.isl_tokens_cv,
            load.osl_tokens_cv,
            cached,
        )
        predicted = estimated_ttft_ms(models, config, seen, obs.ready_groups, percentile=50.0)
        if math.isfinite(predicted) and predicted > 0:
            return obs.mean_latency_ms / predicted
    return None


def decode_ratio(models: PoolModels, state: PlannerState, tick: TickInput) -> float | None:
    obs = tick.decode
    ranks = obs.ready_groups * models.decode.dp_ranks
    latency = obs.mean_latency_ms if obs.mean_latency_ms is not None else obs.latency_ms
    if not (obs.running_requests and ranks and latency is not None and state.isl.observations):
        return None
    cv = state.last_lengths.osl_tokens_cv if state.last_lengths is not None else 0.0
    ctx = decode_context_tokens(state.isl.forecast(1), state.osl.forecast(1), cv)
    predicted = decode_itl_s(models.decode, obs.running_requests / ranks, ctx) * 1e3
    return latency / predicted if predicted > 0 else None


def correct(config: PlannerConfig, models: PoolModels, state: PlannerState, tick: TickInput) -> PlannerState:
    """The state with this interval's corrections folded in."""
    prefill, decode = state.prefill_correction, state.decode_correction
    p = prefill_ratio(config, models, state, tick)
    if p is not None:
        prefill = _smoothed(config, prefill, p)
    d = decode_ratio(models, state, tick)
    if d is not None:
        decode = _smoothed(config, decode, d)
    lanes = tick.prefill.ready_groups * models.prefill.dp_ranks
    return replace(
        state,
        prefill_correction=prefill,
        decode_correction=decode,
        prefill_settled=tick.prefill.queued_requests <= lanes,
    )
