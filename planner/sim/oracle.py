"""The true oracle: the fewest GPU-hours whose schedule meets the SLA in every interval, knowing
the whole trace, the start-up time and the simulator's ground truth.

1. **Requirements.** Each pool is replayed alone at every static size in a range (prefill with
   unlimited decode, decode with requests arriving after their own prefill step), and every
   request is marked as meeting its pool's target or not. For each planning interval the
   cheapest pair of sizes (by GPUs) under which at least `threshold` of the requests arriving in
   it meet both targets is the interval's requirement.
2. **Schedule.** Per pool, a dynamic program over intervals finds the cheapest group timeline
   covering the requirement, one group "level" at a time (level ℓ must serve wherever the
   requirement is ≥ ℓ; a schedule's cost is the sum of its levels'). A group serves `startup`
   intervals after it is asked for and is paid for from then; it serves at least one interval
   (its minimum lifetime); removing it costs the time its last requests take to drain. Bridging a
   gap shorter than a restart is cheaper than stopping. Groups present at time 0 are free to
   start, as for every policy. Only intervals after the warm-up are paid for.
3. **Confirmation.** `SchedulePolicy` replays the schedule in the full simulator, which reports
   its attainment and GPU-hours like any other policy's. Where a scored interval falls short of
   `threshold` there, its requirement is raised and the program solved again
   (`confirm_schedule`), so the oracle is a schedule the simulator confirms, not only a program
   on the sweeps; the program's first objective stays the bound.
4. **Trace floor.** The bench grades policies by 99% of the requests over the whole trace, a
   looser bar than 99% in every interval: a policy may let a few intervals miss and pay less
   than the schedule above. `floor.trace_floor` bounds any such policy from below (a Lagrangian
   relaxation over the sweeps' per-interval curves), so the bench can check both bounds like
   with like.

The requirement sweeps are exact for each pool on its own with no backlog; the pools interact in
the full simulator through the timing of decode's arrivals, and backlogs carry over there, which
the confirmation finds and repairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from moeplane.planner.perf.profile import ProfiledModel
from moeplane.planner.sim.cluster import SimConfig
from moeplane.planner.sim.decode_pool import DecodePool
from moeplane.planner.sim.floor import trace_floor
from moeplane.planner.sim.prefill_pool import PrefillPool
from moeplane.planner.sim.requests import DONE, RequestBook
from moeplane.planner.sim.runner import SimReport, simulate
from moeplane.planner.sim.traces import Trace
from moeplane.planner.sim.truth import GroundTruth, attainable
from moeplane.planner.tick import LoadObservation, TickInput

ORACLE_THRESHOLD = 0.99  # share of each interval's requests that must meet the SLA
# The decode sweeps step in 5 s ticks (a sequence's ITL averages over its whole life, so a
# coarser step changes little and saves most of the sweep); the replay that confirms the
# schedule runs at the simulator's own tick.
DECODE_SWEEP_TICK_S = 5.0
_MAX_GROUPS = 512


def prefill_outcomes(trace: Trace, model: GroundTruth, cfg: SimConfig, groups: int) -> np.ndarray:
    """[N] bool: the request's TTFT meets the target with `groups` prefill groups throughout.

    A request still waiting when its TTFT target has passed is dropped (it missed already): a
    shortage in one interval leaves no backlog to the next, as under the oracle's schedule,
    which never runs short."""
    book = RequestBook(trace)
    pool = PrefillPool(model, book, batch_tokens=cfg.prefill_batch_tokens, timeout_s=cfg.sla.ttft_ms / 1e3)
    pool.scale_to(groups, 0.0, 0.0)
    first = np.full(trace.requests, np.inf)
    t, end = 0.0, trace.duration_s + cfg.request_timeout_s
    while t < end and (t < trace.duration_s or pool.queued):
        started, done = pool.tick(t, t + cfg.tick_s)
        first[started] = done
        t += cfg.tick_s
    return (first - trace.arrival_s) * 1e3 <= cfg.sla.ttft_ms


def decode_outcomes(
    trace: Trace, model: GroundTruth, prefill: GroundTruth, cfg: SimConfig, groups: int
) -> np.ndarray:
    """[N] bool: the request's ITL meets the target with `groups` decode groups throughout, each
    request arriving at decode after its own prefill step (and the KV transfer)."""
    book = RequestBook(trace)
    book.fail(np.flatnonzero(book.isl + book.osl > model.kv_tokens_per_rank))
    pool = DecodePool(model, book, kv_transfer_s_per_token=cfg.kv_transfer_s_per_token)
    pool.scale_to(groups, 0.0, 0.0)
    first = (
        trace.arrival_s
        + PrefillPool(
            prefill,
            RequestBook(trace),
            batch_tokens=cfg.prefill_batch_tokens,
            timeout_s=cfg.request_timeout_s,
        ).floor_s
    )
    order = np.argsort(first, kind="stable")
    first_sorted = first[order]
    single = pool.steps <= 0
    fits = book.status == 0
    # A request that has waited for a slot longer than its whole decode may take has missed:
    # dropped, so that a shortage leaves no backlog (see prefill_outcomes).
    budget_s = np.maximum(trace.osl_tokens - 1, 1) * cfg.sla.itl_ms / 1e3
    t, i, n = 0.0, 0, trace.requests
    end = trace.duration_s + cfg.drain_limit_s
    tick_s = max(cfg.tick_s, DECODE_SWEEP_TICK_S)
    while t < end and (i < n or pool.live or len(pool.wait_req)):
        t1 = t + tick_s
        j = int(np.searchsorted(first_sorted, t1, side="left"))
        batch = order[i:j]
        batch = batch[fits[batch] & ~single[batch]]
        pool.enqueue(batch, first[batch])
        i = j
        pool.tick(t, t1)
        pool.drain_itl_samples()
        late = t1 - pool.wait_ready_s > budget_s[pool.wait_req]
        if late.any():
            book.fail(pool.wait_req[late])
            pool.wait_req, pool.wait_ready_s = pool.wait_req[~late], pool.wait_ready_s[~late]
        t = t1
    osl = trace.osl_tokens
    itl = np.where(osl > 1, (book.finish_s - first) / np.maximum(osl - 1, 1), 0.0)
    ok = (book.status == DONE) & (itl * 1e3 <= cfg.sla.itl_ms)
    return ok | (single & fits)


@dataclass
class Requirements:
    """Per interval: the cheapest (prefill, decode) sizes meeting the SLA, and the sweep behind it."""

    interval_s: float
    prefill: np.ndarray  # [T] int64
    decode: np.ndarray  # [T] int64
    swept_prefill: tuple[int, int]  # sizes tried (lo, hi)
    swept_decode: tuple[int, int]
    # [T, P, D] scored requests arriving in each interval that meet both targets with
    # swept_prefill[0] + a prefill and swept_decode[0] + b decode groups, counting a request as
    # met at every size from the smallest one it met at (so never fewer than the sweeps saw), and
    # at one group past the sweep as met (the most any size could do).
    met: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1), dtype=np.int64))
    scored: int = 0  # scored (after the warm-up) attainable requests


def _interval_index(trace: Trace, interval_s: float) -> tuple[np.ndarray, int]:
    steps = math.ceil(trace.duration_s / interval_s)
    return np.minimum((trace.arrival_s // interval_s).astype(np.int64), steps - 1), steps


def requirements(
    trace: Trace,
    prefill: ProfiledModel,
    decode: ProfiledModel,
    cfg: SimConfig,
    *,
    guess: tuple[int, int] = (1, 1),
    threshold: float = ORACLE_THRESHOLD,
) -> Requirements:
    """Sweep each pool's static sizes around `guess` until every interval is met, then pick each
    interval's cheapest pair."""
    true_p, true_d = GroundTruth(prefill, cfg.truth), GroundTruth(decode, cfg.truth)
    idx, steps = _interval_index(trace, cfg.interval_s)
    floor = PrefillPool(
        true_p, RequestBook(trace), batch_tokens=cfg.prefill_batch_tokens, timeout_s=cfg.request_timeout_s
    ).floor_s
    # Only requests the SLA can be met for count (the replay's attainment is over them too).
    can = attainable(
        trace.isl_tokens,
        trace.osl_tokens,
        floor,
        true_d,
        cfg.sla.ttft_ms,
        cfg.sla.itl_ms,
        cfg.kv_transfer_s_per_token,
    )
    idx = np.where(can, idx, steps)  # the others go to a bin past the end
    counts = np.bincount(idx, minlength=steps + 1)[:steps].astype(np.float64)
    ok_p: dict[int, np.ndarray] = {}
    ok_d: dict[int, np.ndarray] = {}

    def share(ok: np.ndarray) -> np.ndarray:
        met = np.bincount(idx, weights=ok.astype(np.float64), minlength=steps + 1)[:steps]
        return np.where(counts > 0, met / np.maximum(counts, 1), 1.0)

    def sweep(outcome, guess_n: int, store: dict[int, np.ndarray]) -> tuple[int, int]:  # type: ignore[no-untyped-def]
        n = max(1, guess_n)
        store[n] = outcome(n)
        while np.any(share(store[n]) < threshold) and n < _MAX_GROUPS:  # grow until all are met
            n += 1
            store[n] = outcome(n)
        hi = n
        n = min(store)
        while n > 1 and np.any(share(store[n]) >= threshold):  # shrink while some interval is met
            n -= 1
            store[n] = outcome(n)
        return min(store), hi

    p_range = sweep(lambda n: prefill_outcomes(trace, true_p, cfg, n), guess[0], ok_p)
    d_range = sweep(lambda n: decode_outcomes(trace, true_d, true_p, cfg, n), guess[1], ok_d)
    scored = idx < steps
    scored &= trace.arrival_s >= cfg.warmup_s
    met = met_counts(
        idx[scored],
        steps,
        (first_met(ok_p, p_range)[scored], p_range[1] + 2 - p_range[0]),
        (first_met(ok_d, d_range)[scored], d_range[1] + 2 - d_range[0]),
    )
    gp, gd = prefill.gpus_per_group, decode.gpus_per_group
    need_p = np.zeros(steps, dtype=np.int64)
    need_d = np.zeros(steps, dtype=np.int64)
    for k in range(steps):
        sel = idx == k
        if not sel.any():
            continue
        best: tuple[int, int, int] | None = None
        for p in range(p_range[0], p_range[1] + 1):
            if p not in ok_p:
                continue
            a = ok_p[p][sel]
            for d in range(d_range[0], d_range[1] + 1):
                if d in ok_d and np.mean(a & ok_d[d][sel]) >= threshold:
                    cost = p * gp + d * gd
                    if best is None or cost < best[0]:
                        best = (cost, p, d)
                    break
        if best is None:  # the pair of largest sizes: the pools alone each met it
            best = (0, p_range[1], d_range[1])
        need_p[k], need_d[k] = best[1], best[2]
    return Requirements(cfg.interval_s, need_p, need_d, p_range, d_range, met, int(scored.sum()))


def first_met(store: dict[int, np.ndarray], swept: tuple[int, int]) -> np.ndarray:
    """[N] int64: the index (0 = swept[0]) of the smallest swept size each request met at; one
    past the sweep for those it never met."""
    lo, hi = swept
    first = np.full(len(store[lo]), hi + 1 - lo, dtype=np.int64)
    for n in range(hi, lo - 1, -1):
        if n in store:
            first[store[n]] = n - lo
    return first


def met_counts(
    interval: np.ndarray, steps: int, prefill: tuple[np.ndarray, int], decode: tuple[np.ndarray, int]
) -> np.ndarray:
    """[T, P, D] int64: requests of each interval whose first met sizes (index arrays [N], with
    P and D sizes) are <= (p, d)."""
    (first_p, n_p), (first_d, n_d) = prefill, decode
    flat = (interval * n_p + first_p) * n_d + first_d
    hist = np.bincount(flat, minlength=steps * n_p * n_d).reshape(steps, n_p, n_d)
    return hist.cumsum(axis=1).cumsum(axis=2)


# ---- the schedule: a dynamic program per group level -------------------------------------------


def level_timeline(required: np.ndarray, startup: int, drain: float, weight: np.ndarray) -> np.ndarray:
    """[T] bool: intervals a group is held (starting or serving) in the cheapest timeline that
    serves every interval where `required` [T] is True (see `level_states`)."""
    return level_states(required, startup, drain, weight) != 0


def level_states(required: np.ndarray, startup: int, drain: float, weight: np.ndarray) -> np.ndarray:
    """[T] int64 states of one group level in the cheapest timeline that serves every interval
    where `required` [T] is True: 0 off, 1..startup starting, startup + 1 serving.

    States per interval: off, starting (1..startup), serving. A group may serve from interval 0
    without starting (it exists when the replay begins). Costs: `weight[k]` per held interval,
    plus `drain × weight[k]` when it stops serving at k.
    """
    t_len = len(required)
    off, serve = 0, startup + 1  # states 1..startup are the start-up intervals
    n_states = startup + 2
    inf = math.inf
    cost = np.full((t_len + 1, n_states), inf)
    back = np.zeros((t_len + 1, n_states), dtype=np.int64)
    cost[0, off] = 0.0
    cost[0, serve] = 0.0  # present at the start
    for k in range(t_len):
        w = weight[k]
        for s in range(n_states):
            c = cost[k, s]
            if c == inf:
                continue
            nxt: list[tuple[int, float]] = []
            if s == off:
                nxt.append((off, 0.0))
                if k > 0:  # at time 0 a group is either there already or not asked for yet
                    nxt.append((1 if startup else serve, w))
            elif s == serve:
                nxt += [(serve, w), (off, drain * w)]
            else:
                nxt.append((s + 1 if s < startup else serve, w))
            for s2, add in nxt:
                if c + add < cost[k + 1, s2]:
                    cost[k + 1, s2] = c + add
                    back[k + 1, s2] = s
        # what the group is doing during interval k is the state entered at k + 1
        if required[k]:
            cost[k + 1, [x for x in range(n_states) if x != serve]] = inf
    # cost[k + 1, s]: cheapest way to be in state s during interval k; cost[0] is the state
    # before the replay, where "serving" means present from the start at no start-up cost.
    s = int(np.argmin(cost[t_len]))
    states = np.zeros(t_len, dtype=np.int64)
    for k in range(t_len, 0, -1):
        states[k - 1] = s
        s = int(back[k, s])
    return states


def pool_plan(
    required: np.ndarray, startup: int, drain: float, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """([T] groups held, [T] groups serving) per interval: the sums over the level timelines.
    Held counts groups starting too; serving can exceed `required` where a level is bridged."""
    held = np.zeros(len(required), dtype=np.int64)
    serving = np.zeros(len(required), dtype=np.int64)
    for level in range(1, int(required.max(initial=0)) + 1):
        states = level_states(required >= level, startup, drain, weight)
        held += states != 0
        serving += states == startup + 1
    return held, serving


def pool_schedule(required: np.ndarray, startup: int, drain: float, weight: np.ndarray) -> np.ndarray:
    """[T] int64 groups held (serving or starting) per interval: the sum of the level timelines."""
    return pool_plan(required, startup, drain, weight)[0]


@dataclass
class OracleSchedule:
    requirements: Requirements  # the sweeps' per-interval requirements, before any repair
    prefill_held: np.ndarray  # [T] groups held during each interval
    decode_held: np.ndarray
    # The program's objective on the sweeps' requirements (drains included as estimated), before
    # the confirmation's repairs: the per-interval bound the bench checks policies against.
    gpu_hours_bound: float
    # A lower bound on the GPU-hours of any policy meeting the SLA for `threshold` of the scored
    # requests over the whole trace (not in every interval): `trace_floor`.
    trace_floor_gpu_hours: float = 0.0
    # The confirmation (`confirm_schedule`): the final replay, the requirements it was planned
    # on, and how many (pool, interval) requirements the repairs raised over how many replays.
    replay: SimReport | None = None
    prefill_required: np.ndarray | None = None
    decode_required: np.ndarray | None = None
    repairs: int = 0
    replays: int = 0


def decode_drain_intervals(trace: Trace, decode: ProfiledModel, cfg: SimConfig, groups_hint: int) -> float:
    """Expected intervals a removed decode group keeps its GPUs while its sequences finish: the
    longest remaining output among the sequences of one group, at the ITL of a small batch."""
    rng = np.random.default_rng(0)
    osl = trace.osl_tokens.astype(np.float64)
    if len(osl) == 0:
        return 0.0
    true_d = GroundTruth(decode, cfg.truth)
    ctx = float(np.mean(trace.isl_tokens) + np.mean(osl) / 2)
    itl = (
        float(true_d.decode_step_s_array(np.array([1.0]), np.array([ctx]))[0]) / true_d.output_tokens_per_step
    )
    # sequences a group holds: Little's law at the target ITL, per group
    rate = trace.requests / max(trace.duration_s, 1.0)
    per_group = max(1.0, rate * float(np.mean(osl)) * cfg.sla.itl_ms / 1e3 / max(groups_hint, 1))
    # remaining tokens of a sequence in flight: length-biased total, uniform position
    biased = rng.choice(osl, size=(32, int(min(per_group, 20_000))), p=osl / osl.sum())
    remaining = biased * rng.random(biased.shape)
    return float(np.mean(remaining.max(axis=1))) * itl / cfg.interval_s


@dataclass(frozen=True)
class _Program:
    """What the dynamic program needs besides the requirements."""

    startup: int  # intervals
    decode_drain: float  # intervals
    weight: np.ndarray  # [T] paid share of each interval
    gpus: tuple[int, int]  # per group: prefill, decode
    interval_s: float

    def plan(self, need_p: np.ndarray, need_d: np.ndarray) -> tuple[np.ndarray, ...]:
        """(prefill held, prefill serving, decode held, decode serving), each [T]."""
        p_held, p_serving = pool_plan(need_p, self.startup, 0.0, self.weight)
        d_held, d_serving = pool_plan(need_d, self.startup, self.decode_drain, self.weight)
        return p_held, p_serving, d_held, d_serving

    def gpu_hours(self, p_held: np.ndarray, d_held: np.ndarray) -> float:
        hours = self.interval_s / 3600
        return float(
            np.sum(p_held * self.weight) * self.gpus[0] * hours
            + np.sum(d_held * self.weight) * self.gpus[1] * hours
        )


def oracle_schedule(
    trace: Trace,
    prefill: ProfiledModel,
    decode: ProfiledModel,
    cfg: SimConfig,
    *,
    guess: tuple[int, int] = (1, 1),
    threshold: float = ORACLE_THRESHOLD,
    confirm_replays: int = 0,
    swept: Requirements | None = None,
) -> OracleSchedule:
    """The program's schedule on the sweeps' requirements (`swept`, or swept here); with
    `confirm_replays` > 0, confirmed in the full simulator and repaired where it falls short
    (`confirm_schedule`)."""
    req = swept or requirements(trace, prefill, decode, cfg, guess=guess, threshold=threshold)
    steps = len(req.prefill)
    starts = np.arange(steps) * cfg.interval_s
    # The part of each interval after the warm-up is paid for.
    weight = np.clip((starts + cfg.interval_s - cfg.warmup_s) / cfg.interval_s, 0.0, 1.0)
    weight = np.minimum(weight, np.clip((trace.duration_s - starts) / cfg.interval_s, 0.0, 1.0))
    program = _Program(
        startup=math.ceil(cfg.startup_s / cfg.interval_s - 1e-9),
        decode_drain=decode_drain_intervals(trace, decode, cfg, int(np.median(req.decode)) or 1),
        weight=weight,
        gpus=(prefill.gpus_per_group, decode.gpus_per_group),
        interval_s=cfg.interval_s,
    )
    p_held, _, d_held, _ = program.plan(req.prefill, req.decode)
    floor = trace_floor(req, weight * cfg.interval_s / 3600, program.gpus, threshold)
    schedule = OracleSchedule(req, p_held, d_held, program.gpu_hours(p_held, d_held), floor)
    if confirm_replays <= 0:
        return schedule
    return confirm_schedule(schedule, program, trace, prefill, decode, cfg, threshold, confirm_replays)


def confirm_schedule(
    schedule: OracleSchedule,
    program: _Program,
    trace: Trace,
    prefill: ProfiledModel,
    decode: ProfiledModel,
    cfg: SimConfig,
    threshold: float,
    replays: int,
) -> OracleSchedule:
    """Replay the schedule in the full simulator and, while some scored interval falls short of
    `threshold`, raise its requirement and plan again (at most `replays` replays in all).

    The sweeps judge each pool alone, at sizes held throughout, and drop a request the moment it
    has missed, so a shortage leaves no backlog; the full simulator carries backlogs across
    intervals, starts groups mid-burst and feeds decode from prefill. Where an interval misses,
    the pool whose target its requests missed more (or each pool whose misses alone exceed the
    allowance) gets one group more than the program had serving there; decode also in the next
    interval, since a sequence decodes for longer than an interval. The result is a schedule the
    simulator confirms (or the last one tried, with its replay showing the shortfall)."""
    need_p = schedule.requirements.prefill.copy()
    need_d = schedule.requirements.decode.copy()
    p_held, p_serving, d_held, d_serving = program.plan(need_p, need_d)
    steps = len(need_p)
    repairs = 0
    for done in range(1, replays + 1):
        report = simulate(trace, prefill, decode, SchedulePolicy(p_held, d_held, cfg.interval_s), cfg)
        out = report.intervals
        assert out is not None and len(out.scored) == steps
        short = out.shortfall(threshold) & (program.weight > 0)
        if not short.any() or done == replays:
            break
        for k in np.flatnonzero(short).tolist():
            allowed = (1 - threshold) * out.scored[k]
            ttft, itl = out.ttft_missed[k], out.itl_missed[k]
            if ttft > allowed or ttft >= itl:
                need_p[k] = max(need_p[k], p_serving[k]) + 1
                repairs += 1
            if itl > allowed or itl > ttft:
                for j in range(k, min(k + 2, steps)):
                    need_d[j] = max(need_d[j], d_serving[j]) + 1
                    repairs += 1
        p_held, p_serving, d_held, d_serving = program.plan(need_p, need_d)
    return replace(
        schedule,
        prefill_held=p_held,
        decode_held=d_held,
        replay=report,
        prefill_required=need_p,
        decode_required=need_d,
        repairs=repairs,
        replays=done,
    )


@dataclass
class SchedulePolicy:
    """Replays a fixed schedule: groups held during each interval, asked for at its start."""

    prefill_held: np.ndarray
    decode_held: np.ndarray
    interval_s: float
    name: str = "oracle"
    asked: list[tuple[int, int]] = field(default_factory=list)

    def _at(self, at_s: float) -> tuple[int, int]:
        k = min(len(self.prefill_held) - 1, round(at_s / self.interval_s))
        return int(self.prefill_held[k]), int(self.decode_held[k])

    def initial(self, first: LoadObservation) -> tuple[int, int]:
        return self._at(0.0)

    def decide(self, tick: TickInput) -> tuple[int, int]:
        return self._at(tick.at_s)
