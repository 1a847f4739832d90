"""Replay one trace under one policy and report SLA attainment, GPU-hours and goodput."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
from moeplane.planner.perf.profile import ProfiledModel
from moeplane.planner.sim.cluster import Cluster, SimConfig
from moeplane.planner.sim.policies import Policy
from moeplane.planner.sim.requests import DONE, FAILED
from moeplane.planner.sim.traces import Trace
from moeplane.planner.sim.truth import attainable


@dataclass(frozen=True)
class TimelinePoint:
    at_s: float
    arrival_rate_per_s: float
    prefill_groups: int
    decode_groups: int
    nodes: int
    ttft_ms: float | None  # at the SLA percentile over the interval
    itl_ms: float | None


@dataclass(frozen=True, eq=False)
class IntervalOutcomes:
    """The scored, attainable requests of each planning interval k (arriving in
    [k·interval_s, (k+1)·interval_s); the last interval takes the trace's tail), as the oracle
    indexes them. Arrays are [T] int64."""

    interval_s: float
    scored: np.ndarray
    met: np.ndarray  # meeting both targets
    ttft_missed: np.ndarray  # missing TTFT (failed requests miss both)
    itl_missed: np.ndarray

    def shortfall(self, threshold: float) -> np.ndarray:
        """[T] bool: intervals whose share of met requests is below `threshold`."""
        return (self.scored > 0) & (self.met < threshold * self.scored - 1e-9)


@dataclass(frozen=True)
class SimReport:
    trace: str
    policy: str
    requests: int  # scored: arriving after the warm-up
    attainable: int  # of which the SLA can be met for at all on this hardware (truth.attainable)
    completed: int  # of all scored requests
    failed: int
    attainment: float  # share of attainable requests meeting both TTFT and ITL (failed ones miss)
    # the lowest attainment over the scored intervals (requests by arrival interval): the bar the
    # oracle's schedule is built to, 99% in every interval
    worst_interval_attainment: float
    ttft_attainment: float
    itl_attainment: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    gpu_hours: float  # over the trace after the warm-up
    prefill_gpu_hours: float
    decode_gpu_hours: float
    goodput_req_per_s: float  # requests meeting the SLA per second
    goodput_output_tokens_per_s: float
    mean_nodes: float
    peak_nodes: int
    flaps_per_hour: float  # reversals of scaling direction, both pools, per scored hour
    scale_actions: int  # decisions that changed a pool's size, after the warm-up
    duration_s: float
    wall_s: float
    timeline: tuple[TimelinePoint, ...]
    intervals: IntervalOutcomes | None = None

    def row(self) -> dict[str, object]:
        """Flat summary (no timeline or per-interval outcomes) for tables and JSON."""
        out = asdict(replace(self, timeline=(), intervals=None))
        out.pop("timeline")
        out.pop("intervals")
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}


def simulate(
    trace: Trace,
    prefill: ProfiledModel,
    decode: ProfiledModel,
    policy: Policy,
    cfg: SimConfig,
    *,
    progress: Callable[[float], None] | None = None,
) -> SimReport:
    """Run `trace` under `policy`. Deterministic: the trace carries all the randomness."""
    started = time.perf_counter()
    cluster = Cluster(trace, prefill, decode, cfg)
    interval = cfg.interval_s
    first = trace.load_between(0.0, interval, cfg.peak_window_s)
    cluster.scale_to(*policy.initial(first), ready_now=True)
    timeline: list[TimelinePoint] = []
    t = 0.0
    while t < trace.duration_s - 1e-9:
        t_next = min(trace.duration_s, t + interval)
        cluster.advance(t_next)
        tick = cluster.observe(t, t_next)
        p, d = policy.decide(tick)
        cluster.scale_to(p, d)
        p_nodes, d_nodes = cluster.nodes_now()
        timeline.append(
            TimelinePoint(
                t_next,
                tick.load.arrival_rate_per_s,
                p,
                d,
                p_nodes + d_nodes,
                tick.prefill.latency_ms,
                tick.decode.latency_ms,
            )
        )
        t = t_next
        if progress:
            progress(t / trace.duration_s)
    # Drain: keep the groups as they are until every request resolves or the limit passes.
    limit = trace.duration_s + cfg.drain_limit_s
    while cluster.unresolved() and t < limit:
        t = min(limit, t + interval)
        cluster.advance(t)
    cluster.fail_unresolved()
    return _report(trace, policy.name, cluster, cfg, tuple(timeline), time.perf_counter() - started)


def _report(
    trace: Trace, policy: str, c: Cluster, cfg: SimConfig, timeline: tuple[TimelinePoint, ...], wall_s: float
) -> SimReport:
    book = c.book
    can = attainable(
        trace.isl_tokens,
        trace.osl_tokens,
        c.prefill.floor_s,
        c.decode.model,
        cfg.sla.ttft_ms,
        cfg.sla.itl_ms,
        cfg.kv_transfer_s_per_token,
    )
    in_scope = trace.arrival_s >= cfg.warmup_s
    n_all = int(in_scope.sum())
    scored = in_scope & can
    n = int(scored.sum())
    done = (book.status == DONE) & scored
    ttft = book.first_token_s - trace.arrival_s
    osl = trace.osl_tokens
    itl = np.where(osl > 1, (book.finish_s - book.first_token_s) / np.maximum(osl - 1, 1), 0.0)
    ttft_ok = done & (ttft * 1e3 <= cfg.sla.ttft_ms)
    itl_ok = done & (itl * 1e3 <= cfg.sla.itl_ms)
    good = ttft_ok & itl_ok
    start, end = cfg.warmup_s, trace.duration_s
    duration = max(end - start, 1e-9)
    p_gpu = c.prefill.groups.gpu_seconds(c.prefill.model.gpus_per_group, start, end) / 3600
    d_gpu = c.decode.groups.gpu_seconds(c.decode.model.gpus_per_group, start, end) / 3600

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q) * 1e3) if len(values) else math.nan

    nodes = [p.nodes for p in timeline if p.at_s > start]
    flaps, actions = direction_changes(timeline, start)
    return SimReport(
        trace=trace.name,
        policy=policy,
        requests=n_all,
        attainable=n,
        completed=int(np.sum((book.status == DONE) & in_scope)),
        failed=int(np.sum((book.status == FAILED) & in_scope)),
        attainment=float(good.sum()) / n if n else 1.0,
        worst_interval_attainment=_worst_interval(trace.arrival_s[scored], good[scored], cfg.interval_s),
        ttft_attainment=float(ttft_ok.sum()) / n if n else 1.0,
        itl_attainment=float(itl_ok.sum()) / n if n else 1.0,
        ttft_p50_ms=pct(ttft[done], 50),
        ttft_p99_ms=pct(ttft[done], 99),
        itl_p50_ms=pct(itl[done], 50),
        itl_p99_ms=pct(itl[done], 99),
        gpu_hours=p_gpu + d_gpu,
        prefill_gpu_hours=p_gpu,
        decode_gpu_hours=d_gpu,
        goodput_req_per_s=float(good.sum()) / duration,
        goodput_output_tokens_per_s=float(osl[good].sum()) / duration,
        mean_nodes=float(np.mean(nodes)) if nodes else 0.0,
        peak_nodes=max(nodes, default=0),
        flaps_per_hour=flaps / (duration / 3600),
        scale_actions=actions,
        duration_s=duration,
        wall_s=wall_s,
        timeline=timeline,
        intervals=interval_outcomes(trace, scored, good, ttft_ok, itl_ok, cfg.interval_s),
    )


def interval_outcomes(
    trace: Trace,
    scored: np.ndarray,
    good: np.ndarray,
    ttft_ok: np.ndarray,
    itl_ok: np.ndarray,
    interval_s: float,
) -> IntervalOutcomes:
    """Per-interval counts of the scored requests ([N] bool masks in)."""
    steps = max(1, math.ceil(trace.duration_s / interval_s))
    idx = np.minimum((trace.arrival_s // interval_s).astype(np.int64), steps - 1)[scored]

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(idx, weights=mask[scored].astype(np.float64), minlength=steps).astype(np.int64)

    return IntervalOutcomes(
        interval_s,
        np.bincount(idx, minlength=steps).astype(np.int64),
        count(good),
        count(~ttft_ok),
        count(~itl_ok),
    )


def _worst_interval(arrival_s: np.ndarray, good: np.ndarray, interval_s: float) -> float:
    """The lowest share of `good` [N] among the requests arriving in each interval."""
    if len(arrival_s) == 0:
        return 1.0
    idx = (arrival_s // interval_s).astype(np.int64)
    counts = np.bincount(idx)
    met = np.bincount(idx, weights=good.astype(np.float64))
    return float(np.min(met[counts > 0] / counts[counts > 0]))


def direction_changes(timeline: tuple[TimelinePoint, ...], after_s: float) -> tuple[int, int]:
    """(flaps, actions) after `after_s`: a flap is a pool's size moving the other way from its
    previous move (up then down, or down then up); an action is any change of a pool's size."""
    flaps = actions = 0
    for sizes in ([p.prefill_groups for p in timeline], [p.decode_groups for p in timeline]):
        last = 0
        for i in range(1, len(sizes)):
            step = sizes[i] - sizes[i - 1]
            if step == 0 or timeline[i].at_s <= after_s:
                last = int(np.sign(step)) or last
                continue
            actions += 1
            if last and np.sign(step) != last:
                flaps += 1
            last = int(np.sign(step))
    return flaps, actions
