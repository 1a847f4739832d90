"""Sizing and constraints: from a load forecast to groups per pool, then bounded and budgeted.

Pure functions over the performance models; `core.on_tick` strings them together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moeplane.api.enums import Role
from moeplane.planner.config import PlannerConfig
from moeplane.planner.perf.capacity import (
    DecodePoint,
    decode_capacity,
    decode_groups_needed,
    decode_itl_at_load_s,
    decode_kv_tokens_per_sequence,
    prefill_groups_needed,
    prefill_ttft_s,
)
from moeplane.planner.perf.step_model import DecodeStepModel, PrefillStepModel
from moeplane.planner.tick import LoadForecast, ObservedPool, Reason, ReasonCode


@dataclass(frozen=True)
class PoolModels:
    prefill: PrefillStepModel
    decode: DecodeStepModel

    def nodes_per_group(self, role: Role) -> int:
        return (self.prefill if role is Role.PREFILL else self.decode).nodes_per_group

    def gpus_per_group(self, role: Role) -> int:
        return (self.prefill if role is Role.PREFILL else self.decode).gpus_per_group


@dataclass(frozen=True)
class Sized:
    groups: int | None  # None: no pool size meets the SLA


class _ScaledShape:
    """A step model whose steps take `factor` times longer: how a correction enters the model,
    so that queueing sees the slower service (a latency multiplier would not)."""

    def __init__(self, base: PrefillStepModel | DecodeStepModel, factor: float) -> None:
        self._base, self.factor = base, factor

    @property
    def role(self) -> Role:
        return self._base.role

    @property
    def dp_ranks(self) -> int:
        return self._base.dp_ranks

    @property
    def gpus_per_group(self) -> int:
        return self._base.gpus_per_group

    @property
    def nodes_per_group(self) -> int:
        return self._base.nodes_per_group

    @property
    def kv_tokens_per_rank(self) -> int:
        return self._base.kv_tokens_per_rank


class _ScaledPrefill(_ScaledShape):
    def __init__(self, base: PrefillStepModel, factor: float) -> None:
        super().__init__(base, factor)
        self._prefill = base

    def prefill_step_s(self, tokens_per_rank: float, isl_tokens: float) -> float:
        return self._prefill.prefill_step_s(tokens_per_rank, isl_tokens) * self.factor


class _ScaledDecode(_ScaledShape):
    def __init__(self, base: DecodeStepModel, factor: float) -> None:
        super().__init__(base, factor)
        self._decode = base

    @property
    def output_tokens_per_step(self) -> float:
        return self._decode.output_tokens_per_step

    def decode_step_s(self, batch_per_rank: float, context_tokens: float) -> float:
        return self._decode.decode_step_s(batch_per_rank, context_tokens) * self.factor


def corrected(models: PoolModels, prefill: float, decode: float) -> PoolModels:
    """The models with step times scaled by the planner's corrections."""
    return PoolModels(
        _ScaledPrefill(models.prefill, prefill) if prefill != 1.0 else models.prefill,
        _ScaledDecode(models.decode, decode) if decode != 1.0 else models.decode,
    )


def size_prefill(
    models: PoolModels,
    config: PlannerConfig,
    load: LoadForecast,
    correction: float = 1.0,
    headroom: float | None = None,
) -> Sized:
    """Fewest prefill groups whose TTFT at the SLA percentile meets `headroom` (default: the
    config's) of the target at the load's rate and peak, with prefill steps `correction` times
    the model's."""
    model = corrected(models, correction, 1.0).prefill
    return Sized(
        prefill_groups_needed(
            model,
            arrival_rate_per_s=load.arrival_rate_per_s,
            peak_rate_per_s=load.peak_arrival_rate_per_s,
            isl_tokens=max(load.isl_tokens, 1.0),
            ttft_target_ms=config.sla.ttft_ms * (config.headroom if headroom is None else headroom),
            isl_cv=load.isl_tokens_cv,
            percentile=config.sla.percentile,
            batch_tokens=config.prefill_batch_tokens,
            cached_fraction=min(load.cached_fraction, 0.99),
            service_s=None if load.prefill_service_s is None else load.prefill_service_s * correction,
        )
    )


def decode_point(
    models: PoolModels, config: PlannerConfig, load: LoadForecast, correction: float, headroom: float
) -> DecodePoint:
    """The largest decode batch meeting `headroom` of the ITL target and fitting KV memory."""
    return decode_capacity(
        corrected(models, 1.0, correction).decode,
        isl_tokens=max(load.isl_tokens, 1.0),
        osl_tokens=max(load.osl_tokens, 1.0),
        itl_target_ms=config.sla.itl_ms * headroom,
        osl_cv=load.osl_tokens_cv,
    )


def size_decode(
    models: PoolModels,
    config: PlannerConfig,
    load: LoadForecast,
    correction: float = 1.0,
    headroom: float | None = None,
) -> Sized:
    """Fewest decode groups holding the load's concurrent sequences at the largest batch that
    meets `headroom` of the ITL target and fits in KV memory, with decode steps `correction`
    times the model's."""
    point = decode_point(models, config, load, correction, config.headroom if headroom is None else headroom)
    return Sized(decode_groups_needed(point, arrival_rate_per_s=load.arrival_rate_per_s))


def groups_for_sequences(
    models: PoolModels,
    config: PlannerConfig,
    load: LoadForecast,
    correction: float,
    headroom: float,
    sequences: int,
) -> int:
    """Decode groups that run `sequences` at `headroom` of the ITL target (0 if none)."""
    if sequences <= 0:
        return 0
    point = decode_point(models, config, load, correction, headroom)
    if not point.feasible or point.sequences_per_group <= 0:
        return 0
    return math.ceil(sequences / point.sequences_per_group - 1e-9)


def estimated_ttft_ms(
    models: PoolModels,
    config: PlannerConfig,
    load: LoadForecast,
    groups: int,
    correction: float = 1.0,
    rate_per_s: float | None = None,
    percentile: float | None = None,
) -> float:
    rate = load.arrival_rate_per_s if rate_per_s is None else rate_per_s
    ttft = prefill_ttft_s(
        corrected(models, correction, 1.0).prefill,
        arrival_rate_per_s=rate,
        peak_rate_per_s=load.peak_arrival_rate_per_s if rate_per_s is None else None,
        groups=groups,
        isl_tokens=max(load.isl_tokens, 1.0),
        isl_cv=load.isl_tokens_cv,
        percentile=config.sla.percentile if percentile is None else percentile,
        batch_tokens=config.prefill_batch_tokens,
        cached_fraction=min(load.cached_fraction, 0.99),
        attainable_s=config.sla.ttft_ms / 1e3,
        service_s=None if load.prefill_service_s is None else load.prefill_service_s * correction,
    )
    return ttft * 1e3


def estimated_itl_ms(
    models: PoolModels,
    load: LoadForecast,
    groups: int,
    correction: float = 1.0,
    rate_per_s: float | None = None,
) -> float:
    rate = load.arrival_rate_per_s if rate_per_s is None else rate_per_s
    itl = decode_itl_at_load_s(
        corrected(models, 1.0, correction).decode,
        arrival_rate_per_s=rate,
        groups=groups,
        isl_tokens=max(load.isl_tokens, 1.0),
        osl_tokens=max(load.osl_tokens, 1.0),
        osl_cv=load.osl_tokens_cv,
    )
    return itl * 1e3


def in_flight_minimum(models: PoolModels, obs: ObservedPool, load: LoadForecast) -> int:
    """Groups that must stay so requests in flight keep their place (scale-down drains the rest).

    Decode: enough KV memory for the sequences' reserved tokens. Prefill: one group while any
    request waits, so a queue is never left without a server.
    """
    if obs.role is Role.PREFILL:
        return 1 if obs.inflight_requests > 0 else 0
    m = models.decode
    kv_per_group = m.kv_tokens_per_rank * m.dp_ranks
    tokens = obs.inflight_kv_tokens or obs.inflight_requests * decode_kv_tokens_per_sequence(
        load.isl_tokens, load.osl_tokens, load.osl_tokens_cv
    )
    if tokens <= 0 or kv_per_group <= 0:
        return 0
    return math.ceil(tokens / kv_per_group)


def constrain_pool(
    config: PlannerConfig,
    role: Role,
    *,
    current: int,
    wanted: int,
    floor: int,
) -> tuple[int, list[Reason]]:
    """Apply the in-flight floor, the bounds and the step limits (growth, then shrinking)."""
    reasons: list[Reason] = []
    groups = wanted
    if groups < floor:
        reasons.append(
            Reason(ReasonCode.IN_FLIGHT, f"kept {floor} groups for requests in flight (sized {groups})", role)
        )
        groups = floor
    bounds = config.bounds(role)
    bounded = bounds.clamp(groups)
    if bounded > groups:
        reasons.append(
            Reason(ReasonCode.MIN_BOUND, f"raised {groups} to minReplicas {bounds.min_groups}", role)
        )
    elif bounded < groups:
        reasons.append(
            Reason(ReasonCode.MAX_BOUND, f"capped {groups} at maxReplicas {bounds.max_groups}", role)
        )
    groups = bounded
    step = config.max_step_groups
    if groups < current and config.max_scale_down_groups is not None:
        step = config.max_scale_down_groups
    if abs(groups - current) > step:
        limited = current + step if groups > current else current - step
        reasons.append(
            Reason(
                ReasonCode.STEP_LIMIT,
                f"moved {current} -> {limited} of {groups} (at most {step} a decision)",
                role,
            )
        )
        groups = limited
    return groups, reasons


def fit_budget(
    config: PlannerConfig,
    models: PoolModels,
    prefill: int,
    decode: int,
) -> tuple[int, int, list[Reason]]:
    """Cut both pools in proportion until their nodes fit `gpu_budget_nodes`, then give back
    whole groups while they fit (decode first: it holds the sequences in flight)."""
    budget = config.gpu_budget_nodes
    npg_p, npg_d = models.nodes_per_group(Role.PREFILL), models.nodes_per_group(Role.DECODE)
    used = prefill * npg_p + decode * npg_d
    if budget is None or used <= budget:
        return prefill, decode, []
    share = budget / used
    min_p, min_d = config.prefill_bounds.min_groups, config.decode_bounds.min_groups
    p, d = max(min_p, math.floor(prefill * share)), max(min_d, math.floor(decode * share))
    grew = True
    while grew:
        grew = False
        if d < decode and (p * npg_p + (d + 1) * npg_d) <= budget:
            d, grew = d + 1, True
        if p < prefill and ((p + 1) * npg_p + d * npg_d) <= budget:
            p, grew = p + 1, True
    message = (
        f"wanted prefill {prefill} x {npg_p} + decode {decode} x {npg_d} = {used} nodes over the budget of "
        f"{budget}; got prefill {p} + decode {d} = {p * npg_p + d * npg_d} nodes"
    )
    return p, d, [Reason(ReasonCode.GPU_BUDGET, message)]
