"""The planner core: sizing from the load, every constraint, corrections and reasons."""

from __future__ import annotations

from dataclasses import replace

import pytest
from moeplane.api.enums import Predictor, Role
from moeplane.planner.config import PlannerConfig, PlannerConfigError, PoolBounds, SlaTargets
from moeplane.planner.core import Planner, initial_state, on_tick
from moeplane.planner.sizing import size_decode, size_prefill
from moeplane.planner.tick import (
    LoadForecast,
    LoadObservation,
    PoolObservation,
    ReasonCode,
    TickInput,
    TickInputError,
)

pytestmark = pytest.mark.unit

SLA = SlaTargets(ttft_ms=2000, itl_ms=50, percentile=99)


def config(**changes: object) -> PlannerConfig:
    base = PlannerConfig(
        sla=SLA,
        predictor=Predictor.CONSTANT,
        cooldown_s=0,
        max_step_groups=100,
        max_scale_down_groups=None,
        prefill_scale_down_window_s=0,
        decode_scale_down_window_s=0,
        forecast_margin_z=0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def tick(at_s: float, rate: float, prefill: int, decode: int, **obs: object) -> TickInput:
    load = LoadObservation(rate, 2000, 2000, 0.6, 0.6, peak_arrival_rate_per_s=rate)
    p = PoolObservation(Role.PREFILL, prefill, **{k[2:]: v for k, v in obs.items() if k.startswith("p_")})
    d = PoolObservation(Role.DECODE, decode, **{k[2:]: v for k, v in obs.items() if k.startswith("d_")})
    return TickInput(at_s, load, p, d)


def codes(decision, role=None) -> set[ReasonCode]:
    return {r.code for r in decision.reasons if role is None or r.role is role}


def test_steady_load_is_sized_by_the_performance_model(r1_models) -> None:
    cfg = config()
    decision = on_tick(cfg, r1_models, initial_state(cfg), tick(60, 800, 1, 1))
    load = LoadForecast(800, 800, 2000, 2000, 0.6, 0.6)
    assert decision.prefill.desired_groups == size_prefill(r1_models, cfg, load, 1.0).groups
    assert decision.decode.desired_groups == size_decode(r1_models, cfg, load, 1.0).groups
    assert decision.prefill.desired_groups > 1 and decision.decode.desired_groups > 1
    assert decision.prefill.estimated_latency_ms <= SLA.ttft_ms * cfg.headroom
    assert decision.decode.estimated_latency_ms <= SLA.itl_ms * cfg.headroom
    assert decision.decode.gpus == decision.decode.desired_groups * 144
    assert decision.total_nodes == decision.prefill.desired_groups * 4 + decision.decode.desired_groups * 18
    assert {ReasonCode.FORECAST, ReasonCode.SIZED} <= codes(decision)
    summary = decision.to_dict()
    assert summary["decode"]["desiredGroups"] == decision.decode.desired_groups
    assert any("sized" in r for r in summary["reasons"])


def test_more_load_more_groups_and_the_state_is_not_mutated(r1_models) -> None:
    cfg = config()
    state = initial_state(cfg)
    low = on_tick(cfg, r1_models, state, tick(60, 400, 1, 1))
    high = on_tick(cfg, r1_models, state, tick(60, 1600, 1, 1))
    assert state.ticks == 0 and state.rate.observations == 0
    assert high.prefill.desired_groups > low.prefill.desired_groups
    assert high.decode.desired_groups > low.decode.desired_groups


def test_bounds_step_limit_and_cooldown(r1_models) -> None:
    cfg = config(
        prefill_bounds=PoolBounds(2, 5), decode_bounds=PoolBounds(1, 6), max_step_groups=2, cooldown_s=300
    )
    p = Planner(cfg, r1_models)
    first = p.on_tick(tick(60, 3000, 4, 1))
    assert first.prefill.desired_groups == 5 and ReasonCode.MAX_BOUND in codes(first, Role.PREFILL)
    assert first.decode.desired_groups == 3 and ReasonCode.STEP_LIMIT in codes(first, Role.DECODE)
    idle = p.on_tick(tick(120, 1, 5, 3))  # idle, but both pools just changed: hold them
    assert idle.prefill.desired_groups == 5 and ReasonCode.COOLDOWN in codes(idle, Role.PREFILL)
    assert idle.decode.desired_groups == 3 and ReasonCode.COOLDOWN in codes(idle, Role.DECODE)
    later = p.on_tick(tick(420, 1, 5, 3))
    assert later.prefill.desired_groups == 3  # two steps down, not to the minimum of 2 at once
    assert later.decode.desired_groups == 1
    assert ReasonCode.STEP_LIMIT in codes(later, Role.PREFILL)
    floor = p.on_tick(tick(800, 0, 3, 1))
    assert floor.prefill.desired_groups == 2 and ReasonCode.MIN_BOUND in codes(floor, Role.PREFILL)


def test_shrinking_is_slower_than_growing(r1_models) -> None:
    cfg = config(max_step_groups=6, max_scale_down_groups=2)
    p = Planner(cfg, r1_models)
    up = p.on_tick(tick(60, 1600, 2, 1))
    assert up.prefill.desired_groups == 8  # six up at once
    down = p.on_tick(tick(120, 100, 8, up.decode.desired_groups))
    assert down.prefill.desired_groups == 6 and ReasonCode.STEP_LIMIT in codes(down, Role.PREFILL)


def test_gpu_budget_cuts_both_pools_to_fit(r1_models) -> None:
    cfg = config(gpu_budget_nodes=60)
    decision = on_tick(cfg, r1_models, initial_state(cfg), tick(60, 1600, 1, 1))
    assert decision.total_nodes <= 60
    assert decision.decode.desired_groups >= 1 and decision.prefill.desired_groups >= 1
    assert ReasonCode.GPU_BUDGET in codes(decision)
    assert "over the budget of 60" in next(
        str(r) for r in decision.reasons if r.code is ReasonCode.GPU_BUDGET
    )


def test_scale_down_keeps_room_for_sequences_in_flight(r1_models) -> None:
    cfg = config()
    kv_per_group = r1_models.decode.kv_tokens_per_rank * r1_models.decode.dp_ranks
    decision = on_tick(
        cfg,
        r1_models,
        initial_state(cfg),
        tick(60, 1, 1, 6, d_running_requests=10, d_inflight_kv_tokens=int(3.5 * kv_per_group)),
    )
    assert decision.decode.desired_groups == 4
    assert ReasonCode.IN_FLIGHT in codes(decision, Role.DECODE)
    cfg = config(prefill_bounds=PoolBounds(0, None))
    running = on_tick(cfg, r1_models, initial_state(cfg), tick(60, 0, 1, 1, p_running_requests=3))
    assert running.prefill.desired_groups == 1 and ReasonCode.IN_FLIGHT in codes(running, Role.PREFILL)
    idle = on_tick(cfg, r1_models, initial_state(cfg), tick(60, 0, 1, 1))
    assert idle.prefill.desired_groups == 0


def test_a_backlog_adds_prefill_groups_the_window_does_not_remember(r1_models) -> None:
    cfg = config(prefill_scale_down_window_s=600)
    p = Planner(cfg, r1_models)
    calm = p.on_tick(tick(60, 800, 8, 4)).prefill.desired_groups
    backlog = p.on_tick(tick(120, 800, calm, 4, p_queued_requests=60_000))
    assert backlog.prefill.desired_groups > calm and ReasonCode.BACKLOG in codes(backlog, Role.PREFILL)
    after = p.on_tick(tick(180, 800, backlog.prefill.desired_groups, 4))
    assert after.prefill.desired_groups == calm


def test_the_scale_down_window_holds_recent_peaks(r1_models) -> None:
    cfg = config(prefill_scale_down_window_s=300, decode_scale_down_window_s=0)
    p = Planner(cfg, r1_models)
    peak = p.on_tick(tick(60, 1600, 1, 1))
    quiet = p.on_tick(tick(120, 400, peak.prefill.desired_groups, peak.decode.desired_groups))
    assert quiet.prefill.desired_groups == peak.prefill.desired_groups
    assert ReasonCode.STABILIZED in codes(quiet, Role.PREFILL)
    assert quiet.decode.desired_groups < peak.decode.desired_groups  # no window for decode here
    gone = p.on_tick(tick(420, 400, peak.prefill.desired_groups, quiet.decode.desired_groups))
    assert gone.prefill.desired_groups < peak.prefill.desired_groups


def test_observed_latency_above_the_model_raises_the_correction(r1_models) -> None:
    cfg = config()
    p = Planner(cfg, r1_models)
    base = p.on_tick(tick(60, 800, 8, 5))
    groups = base.decode.desired_groups
    slow = None
    for i in range(8):  # decode runs 1.5x slower than the model says at the batch it runs
        from moeplane.planner.perf.capacity import decode_context_tokens, decode_itl_s

        running = 60_000
        itl = decode_itl_s(r1_models.decode, running / (groups * 144), decode_context_tokens(2000, 2000, 0.6))
        slow = p.on_tick(
            tick(
                120 + 60 * i,
                800,
                base.prefill.desired_groups,
                groups,
                d_latency_ms=1.5 * itl * 1e3,
                d_running_requests=running,
            )
        )
    assert slow is not None
    assert slow.decode.correction == pytest.approx(1.5, rel=0.05)
    assert slow.decode.desired_groups > groups
    assert ReasonCode.CORRECTION in codes(slow, Role.DECODE)


def test_a_prefill_backlog_does_not_teach_the_correction(r1_models) -> None:
    cfg = config()
    p = Planner(cfg, r1_models)
    for i in range(5):
        d = p.on_tick(tick(60 * (i + 1), 800, 8, 5, p_latency_ms=30_000.0, p_queued_requests=50_000))
    assert d.prefill.correction == 1.0


def test_known_load_replaces_the_forecast(r1_models) -> None:
    cfg = config()
    known = LoadForecast(1600, 1600, 2000, 2000, 0.6, 0.6)
    d = on_tick(cfg, r1_models, initial_state(cfg), tick(60, 100, 1, 1), known_load=known)
    assert d.forecast == known
    assert d.decode.desired_groups == size_decode(r1_models, cfg, known, 1.0).groups


def test_forecast_looks_ahead_over_start_up(r1_models) -> None:
    cfg = config(predictor=Predictor.HOLT, startup_s=120)
    p = Planner(cfg, r1_models)
    for i, rate in enumerate((400, 500, 600, 700, 800)):
        d = p.on_tick(tick(60 * (i + 1), rate, 10, 5))
    assert d.forecast.arrival_rate_per_s > 900  # three intervals ahead on a rising ramp


def test_bad_inputs_and_settings_are_named() -> None:
    with pytest.raises(
        TickInputError, match=r"load\.arrival_rate_per_s must be a finite non-negative number"
    ):
        LoadObservation(-1.0, 100, 100)
    with pytest.raises(TickInputError, match="decode: utilization must be in"):
        PoolObservation(Role.DECODE, 1, utilization=1.5)
    with pytest.raises(TickInputError, match=r"tick\.prefill must observe the prefill pool"):
        TickInput(
            0, LoadObservation(1, 1, 1), PoolObservation(Role.DECODE, 1), PoolObservation(Role.DECODE, 1)
        )
    with pytest.raises(PlannerConfigError, match="maxReplicas \\(1\\) is below minReplicas \\(2\\)"):
        PoolBounds(2, 1)
    with pytest.raises(PlannerConfigError, match=r"planner\.headroom out of range: 1\.5"):
        PlannerConfig(sla=SLA, headroom=1.5)
    with pytest.raises(PlannerConfigError, match=r"sla\.percentile"):
        SlaTargets(100, 10, percentile=100)
