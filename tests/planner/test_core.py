"""The planner core: sizing from the load, every constraint, stability rules, corrections and
reasons."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml
from moeplane.api.enums import Predictor, Role
from moeplane.api.spec import parse_deployment
from moeplane.planner.config import PlannerConfig, PlannerConfigError, PoolBounds, SlaTargets
from moeplane.planner.core import Planner, initial_state, on_tick
from moeplane.planner.perf.capacity import decode_context_tokens, decode_itl_s
from moeplane.planner.sim.scenario import EXAMPLE_MANIFEST
from moeplane.planner.sizing import decode_point, size_decode, size_prefill
from moeplane.planner.spec_adapter import config_from_spec
from moeplane.planner.tick import (
    LoadForecast,
    LoadObservation,
    ObservedPool,
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
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def tick(at_s: float, rate: float, prefill: int, decode: int, **obs: object) -> TickInput:
    load = LoadObservation(rate, 2000, 2000, 0.6, 0.6, peak_arrival_rate_per_s=rate)
    p = ObservedPool(Role.PREFILL, prefill, **{k[2:]: v for k, v in obs.items() if k.startswith("p_")})
    d = ObservedPool(Role.DECODE, decode, **{k[2:]: v for k, v in obs.items() if k.startswith("d_")})
    return TickInput(at_s, load, p, d)


def codes(decision, role=None) -> set[ReasonCode]:
    return {r.code for r in decision.reasons if role is None or r.role is role}


def load(rate: float) -> LoadForecast:
    return LoadForecast(rate, rate, 2000, 2000, 0.6, 0.6)


def test_steady_load_is_sized_by_the_performance_model(r1_models) -> None:
    cfg = config()
    decision = on_tick(cfg, r1_models, initial_state(cfg), tick(60, 800, 1, 1))
    assert decision.prefill.desired_groups == size_prefill(r1_models, cfg, load(800)).groups
    assert decision.decode.desired_groups == size_decode(r1_models, cfg, load(800)).groups
    assert decision.prefill.desired_groups > 1 and decision.decode.desired_groups > 1
    assert decision.prefill.estimated_latency_ms <= SLA.ttft_ms * cfg.headroom
    assert decision.decode.estimated_latency_ms <= SLA.itl_ms * cfg.headroom
    assert decision.decode.gpus == decision.decode.desired_groups * 144
    assert decision.total_nodes == decision.prefill.desired_groups * 4 + decision.decode.desired_groups * 18
    assert {ReasonCode.FORECAST, ReasonCode.SIZED} <= codes(decision)
    summary = decision.to_dict()
    assert summary["decode"]["desiredGroups"] == decision.decode.desired_groups
    assert any("sized" in r for r in summary["reasons"])


def test_a_capacity_margin_sizes_for_that_much_more_load_and_says_so(r1_models) -> None:
    plain, margin = config(), config(capacity_margin=0.25)
    held = on_tick(margin, r1_models, initial_state(margin), tick(60, 800, 1, 1))
    # The margin sizes both pools as the plain planner sizes 25% more load; the forecast is unchanged.
    more = on_tick(plain, r1_models, initial_state(plain), tick(60, 1000, 1, 1))
    assert held.prefill.desired_groups == more.prefill.desired_groups
    assert held.decode.desired_groups == more.decode.desired_groups
    less = on_tick(plain, r1_models, initial_state(plain), tick(60, 800, 1, 1))
    assert held.prefill.desired_groups > less.prefill.desired_groups
    assert held.forecast.arrival_rate_per_s == pytest.approx(800)
    assert any("sized with a 25% margin" in r.message for r in held.reasons)
    # The margin also holds on the way down: the plain planner sheds groups the margin keeps.
    big = more.prefill.desired_groups
    kept = on_tick(margin, r1_models, initial_state(margin), tick(60, 800, big, 1))
    shed = on_tick(plain, r1_models, initial_state(plain), tick(60, 800, big, 1))
    assert kept.prefill.desired_groups == big > shed.prefill.desired_groups
    with pytest.raises(PlannerConfigError, match=r"planner\.capacityMarginPercent out of range: 150"):
        config(capacity_margin=1.5)
    manifest = yaml.safe_load(EXAMPLE_MANIFEST.read_text())
    manifest["spec"]["planner"]["capacityMarginPercent"] = 20
    assert config_from_spec(parse_deployment(manifest).spec).capacity_margin == pytest.approx(0.2)


def test_more_load_more_groups_and_the_state_is_not_mutated(r1_models) -> None:
    cfg = config()
    state = initial_state(cfg)
    low = on_tick(cfg, r1_models, state, tick(60, 400, 1, 1))
    high = on_tick(cfg, r1_models, state, tick(60, 1600, 1, 1))
    assert state.ticks == 0 and state.rate.observations == 0 and not state.history
    assert high.prefill.desired_groups > low.prefill.desired_groups
    assert high.decode.desired_groups > low.decode.desired_groups


def test_bounds_and_step_limits_both_ways(r1_models) -> None:
    cfg = config(prefill_bounds=PoolBounds(2, 5), decode_bounds=PoolBounds(1, 6), max_step_groups=2)
    p = Planner(cfg, r1_models)
    first = p.on_tick(tick(60, 3000, 4, 1))
    assert first.prefill.desired_groups == 5 and ReasonCode.MAX_BOUND in codes(first, Role.PREFILL)
    assert first.decode.desired_groups == 3 and ReasonCode.STEP_LIMIT in codes(first, Role.DECODE)
    floor = Planner(config(prefill_bounds=PoolBounds(2, 5), max_scale_down_groups=1), r1_models)
    down = floor.on_tick(tick(60, 1, 5, 3))
    assert down.prefill.desired_groups == 4 and ReasonCode.STEP_LIMIT in codes(down, Role.PREFILL)
    low = Planner(config(prefill_bounds=PoolBounds(2, 5)), r1_models).on_tick(tick(60, 0, 3, 1))
    assert low.prefill.desired_groups == 2 and ReasonCode.MIN_BOUND in codes(low, Role.PREFILL)


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


def test_a_backlog_adds_prefill_groups_once(r1_models) -> None:
    p = Planner(config(), r1_models)
    calm = p.on_tick(tick(60, 800, 8, 4)).prefill.desired_groups
    backlog = p.on_tick(tick(120, 800, calm, 4, p_queued_requests=60_000))
    assert backlog.prefill.desired_groups > calm and ReasonCode.BACKLOG in codes(backlog, Role.PREFILL)
    after = p.on_tick(tick(180, 800, backlog.prefill.desired_groups, 4))
    assert after.prefill.desired_groups == calm


def test_the_window_holds_bursts_and_a_steady_decline_is_followed(r1_models) -> None:
    cfg = config(prefill_scale_down_window_s=300, decode_scale_down_window_s=300)
    p = Planner(cfg, r1_models)
    peak = p.on_tick(tick(60, 1600, 1, 1))
    quiet = p.on_tick(tick(120, 800, peak.prefill.desired_groups, peak.decode.desired_groups))
    assert quiet.prefill.desired_groups == peak.prefill.desired_groups  # the burst may come back
    assert ReasonCode.STABILIZED in codes(quiet, Role.PREFILL)
    # A decline over trend_intervals_down intervals: the window's loads are carried down along it.
    p2 = Planner(replace(cfg, prefill_scale_down_window_s=3600), r1_models)
    sizes = (1, 1)
    for i, rate in enumerate((2000, 1800, 1600, 1400, 1200, 1000, 800)):
        d = p2.on_tick(tick(60 * (i + 1), rate, *sizes))
        sizes = (d.prefill.desired_groups, d.decode.desired_groups)
    assert sizes[0] < size_prefill(r1_models, cfg, load(1400)).groups


def test_hysteresis_a_size_between_thresholds_holds(r1_models) -> None:
    """Grown for a load, the pool keeps its size while the load needs it at the growth
    threshold and shrinks only when the survivors would run at the stricter one."""
    cfg = config()
    groups = size_decode(r1_models, cfg, load(1200)).groups
    assert groups is not None
    strict = size_decode(r1_models, cfg, load(1150), headroom=cfg.scale_down_headroom).groups
    assert strict == groups  # 1150 needs the same size at the strict threshold: no shrink
    d = on_tick(cfg, r1_models, initial_state(cfg), tick(60, 1150, 20, groups))
    assert d.decode.desired_groups == groups
    lighter = on_tick(cfg, r1_models, initial_state(cfg), tick(60, 600, 20, groups))
    assert lighter.decode.desired_groups < groups


def test_no_shrinking_while_groups_start_a_rollout_runs_or_just_after_growth(r1_models) -> None:
    cfg = config(cooldown_s=300)
    starting = on_tick(cfg, r1_models, initial_state(cfg), tick(60, 10, 8, 5, p_starting_groups=2))
    assert starting.prefill.desired_groups == 10 and ReasonCode.UNSETTLED in codes(starting, Role.PREFILL)
    rolling = on_tick(cfg, r1_models, initial_state(cfg), tick(60, 10, 8, 5, d_unsettled=True))
    assert rolling.decode.desired_groups == 5 and ReasonCode.UNSETTLED in codes(rolling, Role.DECODE)
    p = Planner(cfg, r1_models)
    grown = p.on_tick(tick(60, 1600, 1, 1))
    held = p.on_tick(tick(120, 10, grown.prefill.desired_groups, grown.decode.desired_groups))
    assert held.prefill.desired_groups == grown.prefill.desired_groups
    assert ReasonCode.COOLDOWN in codes(held, Role.PREFILL)
    later = p.on_tick(tick(420, 10, grown.prefill.desired_groups, grown.decode.desired_groups))
    assert later.prefill.desired_groups < grown.prefill.desired_groups


def test_a_pool_seen_missing_the_sla_gets_a_group(r1_models) -> None:
    cfg = config()
    sized = size_prefill(r1_models, cfg, load(400)).groups
    assert sized is not None
    slow = on_tick(cfg, r1_models, initial_state(cfg), tick(60, 400, sized, 8, p_latency_ms=5000.0))
    assert slow.prefill.desired_groups == sized + 1 and ReasonCode.OBSERVED_MISS in codes(slow, Role.PREFILL)
    # Refusals count against decode when its KV memory is full.
    full = TickInput(
        60,
        LoadObservation(400, 2000, 2000, 0.6, 0.6, rejected_fraction=0.3),
        ObservedPool(Role.PREFILL, sized),
        ObservedPool(Role.DECODE, 8, utilization=0.97),
    )
    refused = on_tick(cfg, r1_models, initial_state(cfg), full)
    assert ReasonCode.OBSERVED_MISS in codes(refused, Role.DECODE)
    assert ReasonCode.OBSERVED_MISS not in codes(refused, Role.PREFILL)
    assert refused.decode.desired_groups >= 9
    # Groups still starting for the load: wait for them rather than pile on.
    waiting = on_tick(
        cfg, r1_models, initial_state(cfg), tick(60, 400, sized, 8, p_latency_ms=5000.0, p_starting_groups=1)
    )
    assert waiting.prefill.desired_groups == sized + 1


def test_decode_slower_than_modelled_raises_the_correction(r1_models) -> None:
    p = Planner(config(), r1_models)
    base = p.on_tick(tick(60, 800, 8, 5))
    groups = base.decode.desired_groups
    slow = None
    running = 60_000
    ctx = decode_context_tokens(2000, 2000, 0.6)
    itl = decode_itl_s(r1_models.decode, running / (groups * 144), ctx) * 1e3
    for i in range(8):  # decode runs 1.5x slower than the model says at the batch it runs
        slow = p.on_tick(
            tick(
                120 + 60 * i,
                800,
                base.prefill.desired_groups,
                groups,
                d_mean_latency_ms=1.5 * itl,
                d_running_requests=running,
            )
        )
    assert slow is not None
    assert slow.decode.correction == pytest.approx(1.5, rel=0.05)
    assert slow.decode.desired_groups > groups
    assert ReasonCode.CORRECTION in codes(slow, Role.DECODE)


def test_prefill_learns_from_measured_service_not_from_a_backlog(r1_models) -> None:
    p = Planner(config(), r1_models)
    for i in range(5):
        d = p.on_tick(tick(60 * (i + 1), 800, 8, 5, p_latency_ms=30_000.0, p_queued_requests=50_000))
    assert d.prefill.correction == 1.0
    p = Planner(config(), r1_models)
    for i in range(8):
        d = p.on_tick(tick(60 * (i + 1), 800, 12, 5, p_service_ratio=1.3))
    assert d.prefill.correction == pytest.approx(1.3, rel=0.03)
    # Within the deadband, a correction is the model's noise: sizing ignores it.
    p = Planner(config(), r1_models)
    for i in range(8):
        d = p.on_tick(tick(60 * (i + 1), 800, 12, 5, p_service_ratio=1.03))
    assert ReasonCode.CORRECTION not in codes(d, Role.PREFILL)


def test_known_load_replaces_the_forecast(r1_models) -> None:
    cfg = config()
    known = load(1600)
    d = on_tick(cfg, r1_models, initial_state(cfg), tick(60, 100, 1, 1), known_load=known)
    assert d.forecast == known
    assert d.decode.desired_groups == size_decode(r1_models, cfg, known, 1.0).groups


def test_a_confirmed_rise_is_forecast_over_start_up_a_burst_is_not(r1_models) -> None:
    cfg = config(predictor=Predictor.HOLT, startup_s=120)
    p = Planner(cfg, r1_models)
    for i, rate in enumerate((400, 500, 600, 700, 800)):
        d = p.on_tick(tick(60 * (i + 1), rate, 10, 5))
    assert d.forecast.arrival_rate_per_s > 900  # three intervals ahead on a rising ramp
    burst = Planner(cfg, r1_models)
    for i, rate in enumerate((400, 400, 400, 900)):
        b = burst.on_tick(tick(60 * (i + 1), rate, 10, 5))
    assert b.forecast.arrival_rate_per_s == pytest.approx(900)  # one step up: sized as seen


def test_bad_inputs_and_settings_are_named() -> None:
    with pytest.raises(
        TickInputError, match=r"load\.arrival_rate_per_s must be a finite non-negative number"
    ):
        LoadObservation(-1.0, 100, 100)
    with pytest.raises(TickInputError, match=r"load\.rejected_fraction must be in \[0, 1\]"):
        LoadObservation(1.0, 100, 100, rejected_fraction=1.5)
    with pytest.raises(TickInputError, match="decode: utilization must be in"):
        ObservedPool(Role.DECODE, 1, utilization=1.5)
    with pytest.raises(TickInputError, match=r"tick\.prefill must observe the prefill pool"):
        TickInput(0, LoadObservation(1, 1, 1), ObservedPool(Role.DECODE, 1), ObservedPool(Role.DECODE, 1))
    with pytest.raises(PlannerConfigError, match="maxReplicas \\(1\\) is below minReplicas \\(2\\)"):
        PoolBounds(2, 1)
    with pytest.raises(PlannerConfigError, match=r"planner\.headroom out of range: 1\.5"):
        PlannerConfig(sla=SLA, headroom=1.5)
    with pytest.raises(PlannerConfigError, match=r"planner\.scaleDownHeadroom out of range"):
        PlannerConfig(sla=SLA, headroom=0.8, scale_down_headroom=0.9)
    with pytest.raises(PlannerConfigError, match=r"sla\.percentile"):
        SlaTargets(100, 10, percentile=100)


def test_growth_meets_a_heavier_prompt_mix_at_once(r1_models) -> None:
    """An interval of heavier prompts (longer, less cached) is sized for itself, not diluted in
    the scale-down window's mean (Mooncake's mix drifts so; the mean left TTFT over target)."""
    from moeplane.planner.perf.capacity import mean_service_s

    cfg = config(prefill_scale_down_window_s=600, decode_scale_down_window_s=600)
    light = mean_service_s(r1_models.prefill, 2000, 0.6, cfg.prefill_batch_tokens)

    def mixed(at_s: float, service_s: float, groups: int) -> TickInput:
        seen = LoadObservation(
            800, 2000, 2000, 0.6, 0.6, peak_arrival_rate_per_s=800, prefill_service_s=service_s
        )
        return TickInput(at_s, seen, ObservedPool(Role.PREFILL, groups), ObservedPool(Role.DECODE, 4))

    p = Planner(cfg, r1_models)
    groups = 1
    for i in range(5):
        groups = p.on_tick(mixed(60 * (i + 1), light, groups)).prefill.desired_groups
    heavy = p.on_tick(mixed(360, 3 * light, groups)).prefill.desired_groups
    needed = size_prefill(r1_models, cfg, replace(load(800), prefill_service_s=3 * light)).groups
    diluted = size_prefill(r1_models, cfg, replace(load(800), prefill_service_s=light * 8 / 6)).groups
    assert heavy == needed and needed is not None and diluted is not None and needed > diluted > groups - 1


def test_a_decode_miss_from_a_surge_that_has_passed_adds_no_group(r1_models) -> None:
    cfg = config()
    sized = size_decode(r1_models, cfg, load(400)).groups
    assert sized is not None
    current = sized + 2
    per_group = decode_point(r1_models, cfg, load(400), 1.0, cfg.headroom).sequences_per_group
    ctx = decode_context_tokens(2000, 2000, 0.6)

    def missed(running: int) -> TickInput:
        # p99 ITL over target; the mean as the model says at the batch run (no correction)
        mean = decode_itl_s(r1_models.decode, running / (current * r1_models.decode.dp_ranks), ctx) * 1e3
        return tick(
            60, 400, 8, current, d_latency_ms=60.0, d_mean_latency_ms=mean, d_running_requests=running
        )

    # ITL was over target over the interval, but the sequences in flight now fit fewer groups
    # than there are, none wait and KV is not full: a group grown now would come after the surge.
    passed = on_tick(cfg, r1_models, initial_state(cfg), missed(int(per_group * sized)))
    assert passed.decode.desired_groups == current
    assert any(r.code is ReasonCode.OBSERVED_MISS and "passed" in r.message for r in passed.reasons)
    # The same miss with every group's worth of sequences still in flight: one more group.
    pressing = on_tick(cfg, r1_models, initial_state(cfg), missed(int(per_group * current)))
    assert pressing.decode.desired_groups == current + 1
