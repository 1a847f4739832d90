"""What the planner core reads each tick and what it decides, as frozen values with units.

Adapters fill `TickInput` (from the Redis metrics stream and the workers live, from the
simulator in replay) and act on `Decision` (the MoEPool scale subresource, the embedded
launcher, or the simulated cluster).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from moeplane.api.enums import Role

if TYPE_CHECKING:
    from moeplane.planner.core import PlannerState


class TickInputError(ValueError):
    """An observation that makes no sense (negative rates, NaN): names the field and value."""


@dataclass(frozen=True)
class LoadObservation:
    """The traffic of the last interval."""

    arrival_rate_per_s: float
    isl_tokens_mean: float
    osl_tokens_mean: float
    isl_tokens_cv: float = 0.0  # coefficient of variation of prompt lengths
    osl_tokens_cv: float = 0.0  # coefficient of variation of output lengths
    # Highest arrival rate over short windows (a few seconds) within the interval: prefill has
    # to keep up with it, decode smooths it over sequence lifetimes. None: use the mean.
    peak_arrival_rate_per_s: float | None = None
    # Share of prompt tokens whose KV was already cached (prefix reuse): prefill skips them.
    cached_fraction: float = 0.0
    # Share of the arrivals refused for lack of capacity (503): demand the pools did not serve.
    rejected_fraction: float = 0.0
    # The performance model's mean prefill rank time per request over this interval's actual
    # prompts (the observer knows each prompt; a mean and a cv miss a heavy tail). None: the
    # sizing estimates it from the lengths' mean and cv.
    prefill_service_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("cached_fraction", "rejected_fraction"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise TickInputError(f"load.{name} must be in [0, 1], got {value}")
        values = {
            "arrival_rate_per_s": self.arrival_rate_per_s,
            "isl_tokens_mean": self.isl_tokens_mean,
            "osl_tokens_mean": self.osl_tokens_mean,
            "isl_tokens_cv": self.isl_tokens_cv,
            "osl_tokens_cv": self.osl_tokens_cv,
            "peak_arrival_rate_per_s": self.peak_arrival_rate_per_s or 0.0,
        }
        for name, value in values.items():
            if not math.isfinite(value) or value < 0:
                raise TickInputError(f"load.{name} must be a finite non-negative number, got {value}")

    @property
    def peak_rate_per_s(self) -> float:
        peak = self.peak_arrival_rate_per_s
        return self.arrival_rate_per_s if peak is None else max(peak, self.arrival_rate_per_s)


@dataclass(frozen=True)
class ObservedPool:
    """One pool as observed: its groups and latency at the SLA percentile.

    (The operator has its own `PoolObservation` of a MoEPool's children; this is the planner's.)
    """

    role: Role
    ready_groups: int
    starting_groups: int = 0  # requested, not yet serving
    # TTFT (prefill) or ITL (decode) at the SLA percentile over the interval; None without samples.
    latency_ms: float | None = None
    mean_latency_ms: float | None = None  # the same, averaged
    # prefill: requests being prefilled; decode: sequences decoding (holding KV cache).
    running_requests: int = 0
    # Requests waiting for this pool: for a prefill rank, or for a decode slot with KV memory.
    queued_requests: int = 0
    # decode only: KV tokens reserved by running and queued sequences (ISL + OSL each).
    inflight_kv_tokens: int = 0
    # prefill: busy share of rank time; decode: share of KV memory in use (0..1, None if unknown).
    utilization: float | None = None
    # A rollout is replacing this pool's groups, or groups are draining/restarting/failed: the
    # pool's size is in motion and must not shrink now.
    unsettled: bool = False
    # Measured over modelled service time of the requests served in the interval, where the back
    # end can measure it per request (the replay simulator can; None: unknown).
    service_ratio: float | None = None

    def __post_init__(self) -> None:
        counts = (
            self.ready_groups,
            self.starting_groups,
            self.running_requests,
            self.queued_requests,
            self.inflight_kv_tokens,
        )
        if min(counts) < 0:
            raise TickInputError(
                f"{self.role.value}: groups and request counts must be >= 0, got ready {self.ready_groups}, "
                f"starting {self.starting_groups}, running {self.running_requests}, queued "
                f"{self.queued_requests}, KV tokens {self.inflight_kv_tokens}"
            )
        if self.utilization is not None and not 0 <= self.utilization <= 1:
            raise TickInputError(f"{self.role.value}: utilization must be in [0, 1], got {self.utilization}")
        if self.latency_ms is not None and not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise TickInputError(
                f"{self.role.value}: latency_ms must be finite and >= 0, got {self.latency_ms}"
            )

    @property
    def groups(self) -> int:
        """Groups asked for: serving or starting."""
        return self.ready_groups + self.starting_groups

    @property
    def inflight_requests(self) -> int:
        return self.running_requests + self.queued_requests


@dataclass(frozen=True)
class TickInput:
    at_s: float
    load: LoadObservation
    prefill: ObservedPool
    decode: ObservedPool

    def __post_init__(self) -> None:
        if self.prefill.role is not Role.PREFILL or self.decode.role is not Role.DECODE:
            raise TickInputError("tick.prefill must observe the prefill pool and tick.decode the decode pool")

    def pool(self, role: Role) -> ObservedPool:
        return self.prefill if role is Role.PREFILL else self.decode


@dataclass(frozen=True)
class LoadForecast:
    """The load the pools are sized for (forecast with its margin, or known in replay)."""

    arrival_rate_per_s: float
    peak_arrival_rate_per_s: float
    isl_tokens: float
    osl_tokens: float
    isl_tokens_cv: float = 0.0
    osl_tokens_cv: float = 0.0
    cached_fraction: float = 0.0  # share of prompt tokens served from the prefix cache
    prefill_service_s: float | None = None  # model's mean prefill rank time per request, if known

    @property
    def input_tokens_per_s(self) -> float:
        return self.peak_arrival_rate_per_s * self.isl_tokens


class ReasonCode(StrEnum):
    FORECAST = "forecast"  # the load sized for
    CORRECTION = "correction"  # observed/predicted service time applied
    SIZED = "sized"  # groups the performance model asks for
    BACKLOG = "backlog"  # extra load to drain requests already waiting
    INFEASIBLE = "infeasible"  # no pool size meets the SLA: capped at the maximum
    STABILIZED = "stabilized"  # held: the scale-down window's loads need this size
    OBSERVED_MISS = "observed_miss"  # the pool was seen missing the SLA: one more group
    UNSETTLED = "unsettled"  # held: groups starting, restarting or a rollout under way
    IN_FLIGHT = "in_flight"  # kept to hold requests in flight
    MIN_BOUND = "min_bound"
    MAX_BOUND = "max_bound"
    COOLDOWN = "cooldown"  # shrinking held back: the pool grew too recently
    STEP_LIMIT = "step_limit"  # change capped at maxStepGroups
    GPU_BUDGET = "gpu_budget"  # cut to fit the node budget
    HOLD = "hold"  # no change


@dataclass(frozen=True)
class Reason:
    code: ReasonCode
    message: str
    role: Role | None = None

    def __str__(self) -> str:
        where = f"{self.role.value}: " if self.role else ""
        return f"{where}{self.code.value}: {self.message}"


@dataclass(frozen=True)
class PoolDecision:
    role: Role
    current_groups: int  # ready + starting when the tick came
    sized_groups: int  # what the performance model asks for, before constraints
    desired_groups: int  # after constraints: what the actuator should scale to
    nodes_per_group: int
    gpus_per_group: int
    correction: float
    estimated_latency_ms: float  # TTFT (prefill) / ITL (decode) at desired groups and forecast load

    @property
    def changed(self) -> bool:
        return self.desired_groups != self.current_groups

    @property
    def nodes(self) -> int:
        return self.desired_groups * self.nodes_per_group

    @property
    def gpus(self) -> int:
        return self.desired_groups * self.gpus_per_group


@dataclass(frozen=True)
class Decision:
    at_s: float
    forecast: LoadForecast
    prefill: PoolDecision
    decode: PoolDecision
    reasons: tuple[Reason, ...]
    state: PlannerState  # the core's state after this tick; pass it to the next one

    def pool(self, role: Role) -> PoolDecision:
        return self.prefill if role is Role.PREFILL else self.decode

    @property
    def total_nodes(self) -> int:
        return self.prefill.nodes + self.decode.nodes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the predictor state) for Redis, status and the dashboard."""

        def pool(p: PoolDecision) -> dict[str, Any]:
            latency = p.estimated_latency_ms
            return {
                "currentGroups": p.current_groups,
                "sizedGroups": p.sized_groups,
                "desiredGroups": p.desired_groups,
                "gpus": p.gpus,
                "nodes": p.nodes,
                "correction": round(p.correction, 4),
                "estimatedLatencyMs": round(latency, 3) if math.isfinite(latency) else None,
            }

        f = self.forecast
        return {
            "atSeconds": self.at_s,
            "forecast": {
                "arrivalRatePerS": round(f.arrival_rate_per_s, 4),
                "peakArrivalRatePerS": round(f.peak_arrival_rate_per_s, 4),
                "islTokens": round(f.isl_tokens, 2),
                "oslTokens": round(f.osl_tokens, 2),
            },
            "prefill": pool(self.prefill),
            "decode": pool(self.decode),
            "reasons": [str(r) for r in self.reasons],
        }
