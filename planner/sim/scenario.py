"""Replay scenarios: a manifest's models and planner settings, traces, and all policies run on
each trace. The benchmark and the tests build on this."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from moeplane.api.spec import MoEDeploymentSpec, parse_deployment
from moeplane.planner.config import PlannerConfig, PoolBounds, SlaTargets
from moeplane.planner.perf.profile import ProfiledModel
from moeplane.planner.sim.cluster import SimConfig
from moeplane.planner.sim.dynamo import DynamoPolicy
from moeplane.planner.sim.oracle import OracleSchedule, SchedulePolicy, oracle_schedule
from moeplane.planner.sim.policies import PlannerPolicy, Policy, ReactivePolicy, StaticPolicy, size_for
from moeplane.planner.sim.runner import SimReport, simulate
from moeplane.planner.sim.traces import LengthDist, Trace, bursty_trace, diurnal_trace, poisson_trace
from moeplane.planner.sizing import PoolModels
from moeplane.planner.spec_adapter import config_from_spec, profiled_models
from moeplane.planner.tick import LoadForecast, LoadObservation

POLICIES = ("ours", "oracle", "static-peak", "dynamo", "reactive")
# Replays allowed to confirm (and repair) the oracle's schedule in the full simulator.
ORACLE_CONFIRM_REPLAYS = 6
EXAMPLE_MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "deepseek-r1.yaml"


@dataclass(frozen=True)
class Scenario:
    spec: MoEDeploymentSpec
    prefill: ProfiledModel
    decode: ProfiledModel
    planner: PlannerConfig
    sim: SimConfig
    # The oracle's schedule per (trace, ground truth): its requirement sweep is the expensive part.
    _oracles: dict[tuple[int, object], tuple[Trace, OracleSchedule]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def models(self) -> PoolModels:
        return PoolModels(self.prefill, self.decode)

    def oracle(self, trace: Trace) -> OracleSchedule:
        """The true oracle's schedule for `trace` under this scenario's ground truth (cached)."""
        key = (id(trace), self.sim.truth)
        hit = self._oracles.get(key)
        if hit is not None and hit[0] is trace:
            return hit[1]
        mean = trace.load_between(0.0, trace.duration_s, self.sim.peak_window_s)
        guess = size_for(self.models, self.planner, _mean_forecast(mean))
        schedule = oracle_schedule(
            trace, self.prefill, self.decode, self.sim, guess=guess, confirm_replays=ORACLE_CONFIRM_REPLAYS
        )
        self._oracles[key] = (trace, schedule)
        return schedule

    def policy(self, name: str, trace: Trace) -> Policy:
        if name == "ours":
            return PlannerPolicy(self.planner, self.models)
        if name == "oracle":
            o = self.oracle(trace)
            return SchedulePolicy(o.prefill_held, o.decode_held, self.sim.interval_s)
        if name == "static-peak":
            req = self.oracle(trace).requirements
            return StaticPolicy("static-peak", int(req.prefill.max()), int(req.decode.max()))
        if name == "dynamo":
            return DynamoPolicy(self.planner, self.models)
        if name == "reactive":
            return ReactivePolicy(self.planner, self.models)
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")

    def run(self, trace: Trace, policy: str, progress: Callable[[float], None] | None = None) -> SimReport:
        if policy == "oracle":  # its confirmation replayed the final schedule already
            replay = self.oracle(trace).replay
            if replay is not None:
                return replay
        return simulate(
            trace, self.prefill, self.decode, self.policy(policy, trace), self.sim, progress=progress
        )


def _mean_forecast(load: LoadObservation) -> LoadForecast:
    return LoadForecast(
        load.arrival_rate_per_s,
        load.arrival_rate_per_s,
        max(load.isl_tokens_mean, 1.0),
        max(load.osl_tokens_mean, 1.0),
        load.isl_tokens_cv,
        load.osl_tokens_cv,
        load.cached_fraction,
    )


def load_scenario(
    manifest: str | Path,
    *,
    sla: SlaTargets,
    startup_s: float = 120.0,
    warmup_s: float = 900.0,
    tick_s: float = 2.0,
    **planner_overrides: object,
) -> Scenario:
    """The manifest's layout and planner settings, opened up for replay: pool bounds from 1 to
    unbounded and no node budget unless overridden, the SLA given, KV moved over one RDMA NIC."""
    spec = parse_deployment(yaml.safe_load(Path(manifest).read_text())).spec
    prefill, decode = profiled_models(spec)
    overrides: dict[str, object] = {
        "sla": sla,
        "startup_s": startup_s,
        "prefill_bounds": PoolBounds(1, None),
        "decode_bounds": PoolBounds(1, None),
        "gpu_budget_nodes": None,
        "max_step_groups": 4,
        "cooldown_s": 180.0,
    }
    overrides.update(planner_overrides)
    planner = config_from_spec(spec, **overrides)
    arch, hw = spec.model.resolve_arch(), spec.hardware.figures()
    sim = SimConfig(
        sla=sla,
        interval_s=planner.interval_s,
        tick_s=tick_s,
        startup_s=startup_s,
        warmup_s=warmup_s,
        kv_transfer_s_per_token=arch.kv_bytes_per_token / (hw.rdma_bytes_per_s * 0.8),
        prefill_batch_tokens=planner.prefill_batch_tokens,
    )
    return Scenario(spec, prefill, decode, planner, sim)


def with_sim(scenario: Scenario, **changes: object) -> Scenario:
    return replace(scenario, sim=replace(scenario.sim, **changes))  # type: ignore[arg-type]


def synthetic_traces(
    mean_rate_per_s: float,
    duration_s: float,
    *,
    isl: LengthDist,
    osl: LengthDist,
    seed: int = 0,
    warmup_s: float = 0.0,
) -> dict[str, Trace]:
    """Poisson at the mean; bursty on/off between 0.8x and 1.3x the mean (bursts of ~2 min every
    ~6 min); diurnal (±60%) whose one cycle, trough to peak to trough, spans the time after the
    warm-up (the warm-up sees the end of the cycle before)."""
    cycle_s = duration_s - warmup_s
    return {
        "poisson": poisson_trace(mean_rate_per_s, duration_s, isl, osl, seed=seed + 1),
        "bursty": bursty_trace(
            0.8 * mean_rate_per_s, 1.3 * mean_rate_per_s, 120.0, 240.0, duration_s, isl, osl, seed=seed + 2
        ),
        "diurnal": diurnal_trace(
            mean_rate_per_s,
            0.6,
            cycle_s,
            duration_s,
            isl,
            osl,
            seed=seed + 3,
            phase=-math.pi / 2 - 2 * math.pi * warmup_s / cycle_s,
        ),
    }
