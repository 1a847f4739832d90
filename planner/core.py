"""The planner core: `on_tick(config, models, state, tick) -> Decision`, with no I/O.

Each tick, per pool:
1. **Observe** the interval (`forecast.observe`): predictors, forecast error, the window's loads.
2. **Correct**: the observed service time against the model's, smoothed and clamped, per pool
   (prefill: busy share of its ranks, or median TTFT with a short queue; decode: ITL at the batch
   it ran).
3. **Grow** when the coming load (`forecast.coming_load`: the last interval, or the forecast over
   the start-up horizon on a confirmed rise) needs more groups at `headroom` of the SLA, or when
   the pool was seen missing the SLA (latency over target, or requests refused for capacity)
   and nothing already grows it — except a decode miss whose sequences in flight now fit fewer
   groups than it has (a surge that passed: a group grown for it is ready after it).
4. **Shrink** only to a size that meets the stricter `scale_down_headroom` at every load of the
   scale-down window (carried along a confirmed trend) — so the survivors can take the removed
   groups' load — and, for decode, holds the sequences running now; never while groups are
   starting, a rollout is under way or within `cooldown_s` of growing.
5. **Constrain**: in-flight floor, bounds, step limits, GPU budget.

The state is an immutable value returned inside the decision, so live runs, the replay
simulator and what-if previews can fork it freely. `Planner` is a small holder for live use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from moeplane.api.enums import Role
from moeplane.planner.config import PlannerConfig
from moeplane.planner.correction import correct
from moeplane.planner.forecast import LoadPoint, coming_load, observe, recent_decode, recent_loads, scaled
from moeplane.planner.predictors import LoadPredictor, make_predictor
from moeplane.planner.sizing import (
    PoolModels,
    constrain_pool,
    estimated_itl_ms,
    estimated_ttft_ms,
    fit_budget,
    groups_for_sequences,
    in_flight_minimum,
    size_decode,
    size_prefill,
)
from moeplane.planner.tick import (
    Decision,
    LoadForecast,
    LoadObservation,
    ObservedPool,
    PoolDecision,
    Reason,
    ReasonCode,
    TickInput,
)

# A miss counts when this many times the allowance of requests missed (one slow request in a
# quiet interval is not a miss).
_MISS_FACTOR = 2.0


@dataclass(frozen=True)
class PlannerState:
    rate: LoadPredictor
    isl: LoadPredictor
    osl: LoadPredictor
    rate_error_sq: float = 0.0  # smoothed squared relative error of the one-step rate forecast
    last_rate_forecast: float | None = None
    last_lengths: LoadObservation | None = None  # the last busy interval (lengths, cache hits)
    history: tuple[LoadPoint, ...] = ()  # the intervals of the longest scale-down window
    prefill_correction: float = 1.0
    decode_correction: float = 1.0
    prefill_grew_at_s: float | None = None
    decode_grew_at_s: float | None = None
    prefill_settled: bool = False  # the prefill queue was short at the previous tick
    ticks: int = 0

    def correction(self, role: Role, deadband: float = 0.0) -> float:
        """The pool's correction; within `deadband` of 1 it is the model's noise, not an error."""
        value = self.prefill_correction if role is Role.PREFILL else self.decode_correction
        return 1.0 if abs(value - 1.0) <= deadband else value

    def grew_at_s(self, role: Role) -> float | None:
        return self.prefill_grew_at_s if role is Role.PREFILL else self.decode_grew_at_s


def initial_state(config: PlannerConfig) -> PlannerState:
    return PlannerState(
        rate=make_predictor(config.predictor),
        isl=make_predictor(config.predictor),
        osl=make_predictor(config.predictor),
    )


def _size(
    config: PlannerConfig, models: PoolModels, role: Role, load: LoadForecast, corr: float, headroom: float
) -> int | None:
    sizer = size_prefill if role is Role.PREFILL else size_decode
    return sizer(models, config, scaled(load, 1 + config.capacity_margin), corr, headroom).groups


def observed_miss(config: PlannerConfig, models: PoolModels, tick: TickInput, role: Role) -> str | None:
    """Why the pool was seen missing the SLA over the interval, or None."""
    sla = config.sla
    # Decode full (KV memory nearly used up, or sequences waiting for it) holds requests back
    # before their first decode step: refusals and the wait in TTFT are then decode's, unless
    # prefill has a queue of its own.
    decode_full = (tick.decode.utilization or 0.0) >= 0.85 or tick.decode.queued_requests > 0
    prefill_queue = tick.prefill.queued_requests > tick.prefill.ready_groups * models.prefill.dp_ranks
    blame = Role.DECODE if decode_full and not prefill_queue else Role.PREFILL
    ttft = tick.prefill.latency_ms
    if ttft is not None and ttft > sla.ttft_ms and role is blame:
        return f"observed TTFT p{sla.percentile:g} {ttft:.0f} ms over the {sla.ttft_ms:.0f} ms target"
    itl = tick.decode.latency_ms
    if role is Role.DECODE and itl is not None and itl > sla.itl_ms:
        return f"observed ITL p{sla.percentile:g} {itl:.0f} ms over the {sla.itl_ms:.0f} ms target"
    refused = tick.load.rejected_fraction
    if refused > _MISS_FACTOR * sla.miss_allowance and role is blame:
        return f"{refused:.0%} of requests refused for lack of capacity"
    return None


def _pool_target(
    config: PlannerConfig,
    models: PoolModels,
    state: PlannerState,
    tick: TickInput,
    role: Role,
    coming: LoadForecast,
    reasons: list[Reason],
) -> tuple[int, int, bool]:
    """(groups wanted before bounds/steps/budget, groups the coming load needs, grew)."""
    obs: ObservedPool = tick.pool(role)
    corr = state.correction(role, config.correction_deadband)
    current = obs.groups
    up = _size(config, models, role, coming, corr, config.headroom)
    if up is None:
        top = config.bounds(role).max_groups
        wanted = top if top is not None else current + config.max_step_groups
        reasons.append(
            Reason(ReasonCode.INFEASIBLE, f"no pool size meets the SLA; asking for {wanted}", role)
        )
        return wanted, wanted, wanted > current
    if role is Role.PREFILL and obs.queued_requests > obs.ready_groups * models.prefill.dp_ranks:
        extra = obs.queued_requests / config.interval_s
        bigger = replace(coming, peak_arrival_rate_per_s=coming.peak_arrival_rate_per_s + extra)
        drained = _size(config, models, role, bigger, corr, config.headroom) or up
        if drained > up:
            reasons.append(
                Reason(
                    ReasonCode.BACKLOG,
                    f"{drained} groups also drain {obs.queued_requests} queued in {config.interval_s:.0f}s",
                    role,
                )
            )
            up = drained
    running = (
        groups_for_sequences(
            models, config, coming, corr, config.headroom, obs.running_requests + obs.queued_requests
        )
        if role is Role.DECODE
        else 0
    )
    if running > up:
        reasons.append(
            Reason(
                ReasonCode.IN_FLIGHT,
                f"{running} groups run the {obs.running_requests} sequences in flight",
                role,
            )
        )
        up = running
    reasons.append(Reason(ReasonCode.SIZED, f"{up} groups for the coming load", role))
    miss = observed_miss(config, models, tick, role)
    if up > current:
        return up, up, True
    if miss is not None:
        if obs.starting_groups:
            reasons.append(
                Reason(ReasonCode.OBSERVED_MISS, f"{miss}; {obs.starting_groups} groups still starting", role)
            )
            return current, up, False
        surge_passed = (
            role is Role.DECODE
            and 0 < running < current
            and up < current
            and obs.queued_requests == 0
            and (obs.utilization or 0.0) < 0.85
        )
        if surge_passed:
            # The sequences in flight now fit one group fewer at the headroom, KV is not full and
            # none wait (the correction has taken in the slow steps the miss showed): the miss was
            # a surge that has passed, and a group grown for it would be ready after it, then hold
            # its long sequences for minutes.
            reasons.append(
                Reason(
                    ReasonCode.OBSERVED_MISS,
                    f"{miss}; passed: {up} groups hold the {obs.running_requests} sequences in flight",
                    role,
                )
            )
            return current, up, False
        reasons.append(Reason(ReasonCode.OBSERVED_MISS, f"{miss}: one more group", role))
        return current + 1, up, True
    # Shrinking: to what every load of the window needs (at the growth threshold: a size that
    # held them keeps holding them), and what the coming load needs at the stricter threshold
    # (the survivors take the removed groups' share with room to spare).
    window = config.scale_down_window_s(role)
    strict = _size(config, models, role, coming, corr, config.scale_down_headroom)
    down = max(up, current if strict is None else strict)
    for load in recent_loads(config, state, window, tick.at_s):
        need = _size(config, models, role, load, corr, config.headroom)
        down = max(down, need if need is not None else current)
    if role is Role.DECODE:
        # The sequences held over the window, and their KV, need room too: a decode pool that
        # filled its KV memory a few intervals ago will fill it again.
        held = 0
        for seen in (*recent_decode(state, window, tick.at_s), obs):
            sequences = seen.running_requests + seen.queued_requests
            headroom = config.scale_down_headroom if seen is obs else config.headroom
            held = max(
                held,
                groups_for_sequences(models, config, coming, corr, headroom, sequences),
                in_flight_minimum(models, seen, coming),
            )
        if held > down and held < current:
            reasons.append(
                Reason(
                    ReasonCode.IN_FLIGHT, f"{held} groups hold the sequences of the last {window:.0f}s", role
                )
            )
        down = max(down, held)
    if down >= current:
        if up < current:
            reasons.append(
                Reason(
                    ReasonCode.STABILIZED,
                    f"held at {current}: the last {window:.0f}s of load need {down}",
                    role,
                )
            )
        return current, up, False
    grew = state.grew_at_s(role)
    if obs.starting_groups or obs.unsettled:
        reasons.append(
            Reason(ReasonCode.UNSETTLED, f"held at {current}: groups starting or a rollout under way", role)
        )
        return current, up, False
    if grew is not None and tick.at_s - grew < config.cooldown_s:
        wait = config.cooldown_s - (tick.at_s - grew)
        reasons.append(
            Reason(
                ReasonCode.COOLDOWN, f"held {current} groups (wanted {down}); may shrink in {wait:.0f}s", role
            )
        )
        return current, up, False
    return down, up, False


def on_tick(
    config: PlannerConfig,
    models: PoolModels,
    state: PlannerState,
    tick: TickInput,
    *,
    known_load: LoadForecast | None = None,
) -> Decision:
    """One planning decision. `known_load` replaces the coming load (what-if, tests)."""
    state = observe(config, state, tick.at_s, tick.load, tick.decode)
    state = correct(config, models, state, tick)
    coming, rising = coming_load(config, state)
    if known_load is not None:
        coming, rising = known_load, False
    reasons = [
        Reason(
            ReasonCode.FORECAST,
            f"{'known' if known_load is not None else ('rising to' if rising else 'last')} "
            f"{coming.arrival_rate_per_s:.2f} req/s (peak {coming.peak_arrival_rate_per_s:.2f}), "
            f"ISL {coming.isl_tokens:.0f}, OSL {coming.osl_tokens:.0f}"
            + (f", {coming.cached_fraction:.0%} cached" if coming.cached_fraction else "")
            + (f", {tick.load.rejected_fraction:.0%} refused" if tick.load.rejected_fraction else "")
            + (f"; sized with a {config.capacity_margin:.0%} margin" if config.capacity_margin else ""),
        )
    ]
    desired: dict[Role, int] = {}
    sized: dict[Role, int] = {}
    grew: dict[Role, bool] = {}
    for role in (Role.PREFILL, Role.DECODE):
        obs, corr = tick.pool(role), state.correction(role, config.correction_deadband)
        if abs(corr - 1) > 0.02:
            reasons.append(Reason(ReasonCode.CORRECTION, f"service time x{corr:.2f} the model's", role))
        wanted, sized[role], grew[role] = _pool_target(config, models, state, tick, role, coming, reasons)
        groups, why = constrain_pool(
            config, role, current=obs.groups, wanted=wanted, floor=in_flight_minimum(models, obs, coming)
        )
        desired[role] = groups
        reasons.extend(why)
    p, d, why = fit_budget(config, models, desired[Role.PREFILL], desired[Role.DECODE])
    desired = {Role.PREFILL: p, Role.DECODE: d}
    reasons.extend(why)

    pools: dict[Role, PoolDecision] = {}
    for role in (Role.PREFILL, Role.DECODE):
        obs, corr, groups = tick.pool(role), state.correction(role, config.correction_deadband), desired[role]
        if role is Role.PREFILL:
            latency = estimated_ttft_ms(models, config, coming, groups, corr)
        else:
            latency = estimated_itl_ms(models, coming, groups, corr)
        pools[role] = PoolDecision(
            role=role,
            current_groups=obs.groups,
            sized_groups=sized[role],
            desired_groups=groups,
            nodes_per_group=models.nodes_per_group(role),
            gpus_per_group=models.gpus_per_group(role),
            correction=corr,
            estimated_latency_ms=latency,
        )
        if groups == obs.groups:
            reasons.append(Reason(ReasonCode.HOLD, f"stays at {groups} groups", role))
    p_grew = pools[Role.PREFILL].desired_groups > pools[Role.PREFILL].current_groups
    d_grew = pools[Role.DECODE].desired_groups > pools[Role.DECODE].current_groups
    state = replace(
        state,
        prefill_grew_at_s=tick.at_s if p_grew else state.prefill_grew_at_s,
        decode_grew_at_s=tick.at_s if d_grew else state.decode_grew_at_s,
    )
    return Decision(tick.at_s, coming, pools[Role.PREFILL], pools[Role.DECODE], tuple(reasons), state)


class Planner:
    """Holds config, models and state for a live loop: `planner.on_tick(tick)`."""

    def __init__(self, config: PlannerConfig, models: PoolModels, state: PlannerState | None = None) -> None:
        self.config, self.models = config, models
        self.state = state or initial_state(config)

    def on_tick(self, tick: TickInput, *, known_load: LoadForecast | None = None) -> Decision:
        decision = on_tick(self.config, self.models, self.state, tick, known_load=known_load)
        self.state = decision.state
        return decision


def groups_needed(
    config: PlannerConfig,
    models: PoolModels,
    load: LoadForecast,
    correction: tuple[float, float] = (1.0, 1.0),
) -> tuple[int, int]:
    """Groups both pools need at `load` at the config's headroom, within the bounds (the sizes a
    policy starts a replay with)."""
    out = []
    for role, corr in zip((Role.PREFILL, Role.DECODE), correction, strict=True):
        n = _size(config, models, role, load, corr, config.headroom)
        bounds = config.bounds(role)
        out.append(bounds.clamp(n if n is not None else bounds.max_groups or 1))
    return out[0], out[1]
