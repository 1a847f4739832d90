"""The planner's own configuration: frozen, validated, independent of the CR's shape.

`from_spec` (in `spec_adapter.py`) builds it from a MoEDeployment; tests, the simulator and the
benchmark build it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moeplane.api.enums import Predictor, Role


class PlannerConfigError(ValueError):
    """A planner setting that cannot work: names the field and the value."""


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
    interval_s: float = 60.0
    predictor: Predictor = Predictor.HOLT
    prefill_bounds: PoolBounds = field(default_factory=PoolBounds)
    decode_bounds: PoolBounds = field(default_factory=PoolBounds)
    gpu_budget_nodes: int | None = None
    # A pool that changed size may not shrink again for this long. Growth is never delayed: a
    # scale-up the SLA needs now must not wait for an earlier decision to settle.
    cooldown_s: float = 120.0
    max_step_groups: int = 2
    # Shrinking may go slower than growing: the load that left may come back before a group
    # restarts. None: max_step_groups both ways.
    max_scale_down_groups: int | None = 2
    # Shrink only to the largest size asked for over this window (as the HPA's scale-down
    # stabilization): bursts shorter than a group's start-up cannot be chased, only held.
    # Prefill holds longer: it must serve every burst at once, while decode smooths bursts over
    # the lifetime of its sequences, and its groups are the expensive ones.
    prefill_scale_down_window_s: float = 600.0
    decode_scale_down_window_s: float = 300.0
    # Size for this fraction of the SLA: random fluctuations within an interval need slack.
    headroom: float = 0.9
    # Seconds a new group takes to serve; forecasts look this far ahead so capacity is ready
    # when the load arrives.
    startup_s: float = 0.0
    # Size for forecast × (1 + z × recent relative forecast error): a margin that grows when the
    # load is hard to predict and vanishes when it is steady.
    forecast_margin_z: float = 0.5
    forecast_error_alpha: float = 0.2
    # Observed/predicted latency, smoothed and clamped; the targets are divided by it.
    correction_alpha: float = 0.3
    correction_min: float = 0.5
    correction_max: float = 3.0
    prefill_batch_tokens: float = 8192.0

    def __post_init__(self) -> None:
        checks = {
            "intervalSeconds": self.interval_s > 0,
            "cooldownSeconds": self.cooldown_s >= 0,
            "scaleDownWindowSeconds": min(self.prefill_scale_down_window_s, self.decode_scale_down_window_s)
            >= 0,
            "maxStepGroups": self.max_step_groups > 0,
            "maxScaleDownGroups": self.max_scale_down_groups is None or self.max_scale_down_groups > 0,
            "headroom": 0 < self.headroom <= 1,
            "startupSeconds": self.startup_s >= 0,
            "forecastMarginZ": self.forecast_margin_z >= 0,
            "forecastErrorAlpha": 0 < self.forecast_error_alpha <= 1,
            "correctionAlpha": 0 < self.correction_alpha <= 1,
            "correctionMin/Max": 0 < self.correction_min <= 1 <= self.correction_max,
            "prefillBatchTokens": self.prefill_batch_tokens > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = {
                "intervalSeconds": self.interval_s,
                "cooldownSeconds": self.cooldown_s,
                "scaleDownWindowSeconds": (self.prefill_scale_down_window_s, self.decode_scale_down_window_s),
                "maxStepGroups": self.max_step_groups,
                "maxScaleDownGroups": self.max_scale_down_groups,
                "headroom": self.headroom,
                "startupSeconds": self.startup_s,
                "forecastMarginZ": self.forecast_margin_z,
                "forecastErrorAlpha": self.forecast_error_alpha,
                "correctionAlpha": self.correction_alpha,
                "correctionMin/Max": (self.correction_min, self.correction_max),
                "prefillBatchTokens": self.prefill_batch_tokens,
            }
            raise PlannerConfigError("; ".join(f"planner.{n} out of range: {values[n]}" for n in bad))
        if self.gpu_budget_nodes is not None and self.gpu_budget_nodes <= 0:
            raise PlannerConfigError(f"planner.gpuBudgetNodes must be positive, got {self.gpu_budget_nodes}")

    def bounds(self, role: Role) -> PoolBounds:
        return self.prefill_bounds if role is Role.PREFILL else self.decode_bounds

    def scale_down_window_s(self, role: Role) -> float:
        return self.prefill_scale_down_window_s if role is Role.PREFILL else self.decode_scale_down_window_s
