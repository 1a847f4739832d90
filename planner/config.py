"""The planner's own configuration: frozen, validated, independent of the CR's shape.

`from_spec` (in `spec_adapter.py`) builds it from a MoEDeployment; tests, the simulator and the
benchmark build it directly. The settings a MoEDeployment carries (`spec.planner`) take their
defaults from `PlannerSpec`, so the planner and the CRD never disagree on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moeplane.api.enums import Predictor, Role
from moeplane.api.spec import PlannerSpec


class PlannerConfigError(ValueError):
    """A planner setting that cannot work: names the field and the value."""


# The CRD's defaults (`spec.planner` with nothing set), the planner's too.
_SPEC_DEFAULTS = PlannerSpec()


@dataclass(frozen=True)
class SlaTargets:
    ttft_ms: float
    itl_ms: float
    percentile: float = 90.0  # the targets bind this percentile of requests

    def __post_init__(self) -> None:
        if self.ttft_ms <= 0 or self.itl_ms <= 0:
            raise PlannerConfigError(
                f"sla.ttftMs and sla.itlMs must be positive, got {self.ttft_ms} and {self.itl_ms}"
            )
        if not 0 < self.percentile < 100:
            raise PlannerConfigError(f"sla.percentile must be in (0, 100), got {self.percentile}")

    @property
    def miss_allowance(self) -> float:
        """Share of requests the percentile lets miss."""
        return 1.0 - self.percentile / 100.0


@dataclass(frozen=True)
class PoolBounds:
    min_groups: int = 1
    max_groups: int | None = None

    def __post_init__(self) -> None:
        if self.min_groups < 0:
            raise PlannerConfigError(f"minReplicas must be >= 0, got {self.min_groups}")
        if self.max_groups is not None and self.max_groups < self.min_groups:
            raise PlannerConfigError(
                f"maxReplicas ({self.max_groups}) is below minReplicas ({self.min_groups})"
            )

    def clamp(self, groups: int) -> int:
        groups = max(self.min_groups, groups)
        return groups if self.max_groups is None else min(self.max_groups, groups)


@dataclass(frozen=True)
class PlannerConfig:
    sla: SlaTargets
    interval_s: float = _SPEC_DEFAULTS.interval_seconds
    predictor: Predictor = _SPEC_DEFAULTS.predictor
    prefill_bounds: PoolBounds = field(default_factory=PoolBounds)
    decode_bounds: PoolBounds = field(default_factory=PoolBounds)
    gpu_budget_nodes: int | None = _SPEC_DEFAULTS.gpu_budget_nodes
    # A pool that grew may not shrink for this long (a group started for a rise must get to
    # serve it). Growth is never delayed.
    cooldown_s: float = _SPEC_DEFAULTS.cooldown_seconds
    max_step_groups: int = _SPEC_DEFAULTS.max_step_groups  # most groups added in one decision
    max_scale_down_groups: int | None = None  # most groups removed in one decision (None: as growth)
    # Hysteresis. Grow when the coming load needs more groups at `headroom` of the SLA targets;
    # shrink only to a size that meets `scale_down_headroom` of them at the load of the
    # scale-down window (and at the coming load), so a size between the two thresholds holds.
    headroom: float = 0.95
    scale_down_headroom: float = 0.85
    # The scale-down window: shrink only to what every load seen over this window needs (past
    # loads are carried along a confirmed trend first, so a steady decline is followed; bursts
    # that recur within the window are held, not chased). Prefill meets each burst at once;
    # decode smooths bursts over its sequences' lifetimes.
    prefill_scale_down_window_s: float = 600.0
    decode_scale_down_window_s: float = 600.0
    # Seconds a new group takes to serve; forecasts look this far ahead so capacity is ready
    # when the load arrives.
    startup_s: float = 0.0
    # On a confirmed rise, size for forecast × (1 + z × recent relative forecast error).
    forecast_margin_z: float = 2.0
    forecast_error_alpha: float = 0.3
    # A rise counts once the rate has gone up this many intervals in a row (then the forecast
    # leads growth); a decline once it has gone down `trend_intervals_down` in a row (then past
    # loads are carried down along it, so shrinking follows it).
    trend_intervals: int = 3
    trend_intervals_down: int = 5
    # Pools are sized for the load times (1 + capacity_margin): room for rises faster than a
    # group starts, which no forecast from the past sees coming.
    capacity_margin: float = 0.0
    # Observed/predicted service time, smoothed and clamped; step times are scaled by it.
    correction_alpha: float = 0.4
    correction_min: float = 0.5
    correction_max: float = 3.0
    # Corrections within this of 1 are the model's noise (uneven batches, length mix), not an error.
    correction_deadband: float = 0.05
    prefill_batch_tokens: float = 8192.0

    def __post_init__(self) -> None:
        values: dict[str, object] = {
            "intervalSeconds": self.interval_s,
            "cooldownSeconds": self.cooldown_s,
            "scaleDownWindowSeconds": (self.prefill_scale_down_window_s, self.decode_scale_down_window_s),
            "maxStepGroups": self.max_step_groups,
            "maxScaleDownGroups": self.max_scale_down_groups,
            "headroom": self.headroom,
            "scaleDownHeadroom": self.scale_down_headroom,
            "startupSeconds": self.startup_s,
            "forecastMarginZ": self.forecast_margin_z,
            "forecastErrorAlpha": self.forecast_error_alpha,
            "capacityMarginPercent": self.capacity_margin * 100,
            "trendIntervals": (self.trend_intervals, self.trend_intervals_down),
            "correctionAlpha": self.correction_alpha,
            "correctionMin/Max": (self.correction_min, self.correction_max),
            "correctionDeadband": self.correction_deadband,
            "prefillBatchTokens": self.prefill_batch_tokens,
        }
        checks = {
            "intervalSeconds": self.interval_s > 0,
            "cooldownSeconds": self.cooldown_s >= 0,
            "scaleDownWindowSeconds": min(self.prefill_scale_down_window_s, self.decode_scale_down_window_s)
            >= 0,
            "maxStepGroups": self.max_step_groups > 0,
            "maxScaleDownGroups": self.max_scale_down_groups is None or self.max_scale_down_groups > 0,
            "headroom": 0 < self.headroom <= 1,
            "scaleDownHeadroom": 0 < self.scale_down_headroom <= self.headroom,
            "startupSeconds": self.startup_s >= 0,
            "forecastMarginZ": self.forecast_margin_z >= 0,
            "forecastErrorAlpha": 0 < self.forecast_error_alpha <= 1,
            "capacityMarginPercent": 0 <= self.capacity_margin <= 1,
            "trendIntervals": min(self.trend_intervals, self.trend_intervals_down) >= 1,
            "correctionAlpha": 0 < self.correction_alpha <= 1,
            "correctionMin/Max": 0 < self.correction_min <= 1 <= self.correction_max,
            "correctionDeadband": 0 <= self.correction_deadband < 0.5,
            "prefillBatchTokens": self.prefill_batch_tokens > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise PlannerConfigError("; ".join(f"planner.{n} out of range: {values[n]}" for n in bad))
        if self.gpu_budget_nodes is not None and self.gpu_budget_nodes <= 0:
            raise PlannerConfigError(f"planner.gpuBudgetNodes must be positive, got {self.gpu_budget_nodes}")

    def bounds(self, role: Role) -> PoolBounds:
        return self.prefill_bounds if role is Role.PREFILL else self.decode_bounds

    def scale_down_window_s(self, role: Role) -> float:
        return self.prefill_scale_down_window_s if role is Role.PREFILL else self.decode_scale_down_window_s

    @property
    def horizon_intervals(self) -> int:
        """Intervals a forecast looks ahead: the next one plus the start-up time."""
        return 1 + int(-(-self.startup_s // self.interval_s))
