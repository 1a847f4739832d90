"""What-if: replay the recent window through the core and the simulator under the current and
the proposed settings, and compare groups, GPUs and expected SLA attainment.

Pure (CPU-bound): the service runs it in a worker thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from moeplane.api.enums import Role
from moeplane.api.spec import MoEDeploymentSpec
from moeplane.planner.config import SlaTargets
from moeplane.planner.perf.profile import ProfiledModel
from moeplane.planner.sim.cluster import SimConfig
from moeplane.planner.sim.policies import PlannerPolicy
from moeplane.planner.sim.runner import SimReport, simulate
from moeplane.planner.sim.traces import Trace
from moeplane.planner.sizing import PoolModels
from moeplane.planner.spec_adapter import config_from_spec

from moeplane.bus.request_metrics import RequestRecord

MIN_REQUESTS = 1


class WhatIfError(ValueError):
    """Not enough recent traffic to replay."""


def trace_from_records(records: list[RequestRecord], window_s: float, now_s: float) -> Trace:
    """The requests that arrived in the last `window_s` seconds, as a replayable trace."""
    start = now_s - window_s
    rows = sorted((r for r in records if start <= r.arrived_at_s < now_s), key=lambda r: r.arrived_at_s)
    if len(rows) < MIN_REQUESTS:
        raise WhatIfError(f"no requests in the last {window_s:.0f}s to replay")
    arrival = np.array([r.arrived_at_s - start for r in rows], dtype=np.float64)
    isl = np.array([max(1, r.isl_tokens) for r in rows], dtype=np.int64)
    osl = np.array([max(1, r.osl_tokens) for r in rows], dtype=np.int64)
    return Trace("recent", arrival, isl, osl, window_s, f"last {window_s:.0f}s of requests")


@dataclass(frozen=True)
class WhatIfSide:
    settings: str
    prefill_groups_mean: float
    decode_groups_mean: float
    prefill_groups_final: int
    decode_groups_final: int
    gpus_mean: float
    gpu_hours: float
    attainment: float
    ttft_p50_ms: float
    itl_p50_ms: float

    def to_dict(self) -> dict[str, Any]:
        def r(v: float) -> float | None:
            return round(v, 4) if math.isfinite(v) else None

        return {
            "settings": self.settings,
            "prefillGroupsMean": r(self.prefill_groups_mean),
            "decodeGroupsMean": r(self.decode_groups_mean),
            "prefillGroups": self.prefill_groups_final,
            "decodeGroups": self.decode_groups_final,
            "gpusMean": r(self.gpus_mean),
            "gpuHours": r(self.gpu_hours),
            "attainment": r(self.attainment),
            "ttftP50Ms": r(self.ttft_p50_ms),
            "itlP50Ms": r(self.itl_p50_ms),
        }


def _side(
    name: str, spec: MoEDeploymentSpec, models: PoolModels, trace: Trace, interval_s: float
) -> WhatIfSide:
    config = config_from_spec(spec, interval_s=interval_s)
    sla = SlaTargets(spec.sla.ttft_ms, spec.sla.itl_ms, spec.sla.percentile)
    # New groups are ready at once: the question is what size the settings lead to and what the
    # SLA then gives, not how a cold start would have gone.
    cfg = SimConfig(
        sla=sla, interval_s=interval_s, tick_s=min(1.0, interval_s), startup_s=0.0, drain_limit_s=600.0
    )
    # pool_models() tabulates both pools as profiles: the simulator's input.
    prefill, decode = cast(ProfiledModel, models.prefill), cast(ProfiledModel, models.decode)
    report: SimReport = simulate(trace, prefill, decode, PlannerPolicy(config, models, name=name), cfg)
    tl = report.timeline
    p_gpus, d_gpus = models.gpus_per_group(Role.PREFILL), models.gpus_per_group(Role.DECODE)
    pm = float(np.mean([t.prefill_groups for t in tl])) if tl else 0.0
    dm = float(np.mean([t.decode_groups for t in tl])) if tl else 0.0
    return WhatIfSide(
        settings=name,
        prefill_groups_mean=pm,
        decode_groups_mean=dm,
        prefill_groups_final=tl[-1].prefill_groups if tl else 0,
        decode_groups_final=tl[-1].decode_groups if tl else 0,
        gpus_mean=pm * p_gpus + dm * d_gpus,
        gpu_hours=report.gpu_hours,
        attainment=report.attainment,
        ttft_p50_ms=report.ttft_p50_ms,
        itl_p50_ms=report.itl_p50_ms,
    )


def what_if(
    current: MoEDeploymentSpec,
    proposed: MoEDeploymentSpec,
    models: PoolModels,
    records: list[RequestRecord],
    now_s: float,
    window_s: float,
    interval_s: float,
) -> dict[str, Any]:
    """Both settings over the same recent trace."""
    trace = trace_from_records(records, window_s, now_s)
    interval = min(interval_s, window_s / 2)
    return {
        "windowSeconds": window_s,
        "requests": trace.requests,
        "current": _side("current", current, models, trace, interval).to_dict(),
        "proposed": _side("proposed", proposed, models, trace, interval).to_dict(),
    }
