"""Observe: from what the serving stack writes to Redis to the core's `TickInput`.

What users experience is what counts:
- **Demand** is every request that came, served or not: a 503 is demand the pools could not
  take. Over a tick's window, arrivals = requests that ended in it + the growth of the requests in
  flight (conservation), so long requests still running are counted when they came, not when
  they end.
- **OSL** comes from requests that completed (status ok) only: a rejected request has no output,
  and a client that disconnected cut its output short.
- **TTFT** is measured from arrival, so time queued counts against it; requests refused for lack
  of capacity are misses (`rejected_fraction`), not latencies.

Pure part: `window_stats`, `pool_observation` and `tick_from`. Edge: `RedisObserver` reads the
request stream incrementally (it keeps a bounded tail of recent records, so the dashboard and
what-if read the same window) and the worker registry.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import numpy as np
from moeplane.api.enums import Role
from moeplane.planner.tick import LoadObservation, ObservedPool, TickInput

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.registry import GroupState, WorkerGroup, WorkerRegistry
from moeplane.bus.request_metrics import RequestRecord, RequestStatus, read_request_records

PEAK_WINDOW_S = 5.0


class Outcome(StrEnum):
    """What the user got, as the dashboard counts it."""

    OK = "ok"
    CLIENT_ERROR = "4xx"  # a bad request: not the pools' fault
    NO_CAPACITY = "503"  # refused for lack of capacity: unserved demand
    REJECTED = "rejected"  # refused, without the HTTP status (an older frontend): 4xx or 503
    CANCELLED = "cancelled"  # the client went away
    FAILED = "failed"  # a worker error or the server's timeout


def outcome(record: RequestRecord) -> Outcome:
    status = record.status
    if status is RequestStatus.OK:
        return Outcome.OK
    if status is RequestStatus.CANCELLED:
        return Outcome.CANCELLED
    if status is RequestStatus.REJECTED:
        code = record.http_status
        if code is None:
            return Outcome.REJECTED
        return Outcome.NO_CAPACITY if code in (429, 503) else Outcome.CLIENT_ERROR
    return Outcome.FAILED


def refused_for_capacity(record: RequestRecord) -> bool:
    """A 503 (or a rejection whose status is unknown: the planner errs towards capacity)."""
    return outcome(record) in (Outcome.NO_CAPACITY, Outcome.REJECTED)


class WindowBy(StrEnum):
    ARRIVAL = "arrival"  # history (dashboard buckets, what-if, warm-up): requests that came then
    FINISH = "finish"  # the tick: requests that ended then (their numbers are final)


@dataclass(frozen=True)
class WindowStats:
    """Requests of [t0, t1) (by arrival or by end): their load, outcomes and latencies (ms)."""

    t0_s: float
    t1_s: float
    requests: int
    load: LoadObservation
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    itl_p50_ms: float | None
    itl_p90_ms: float | None
    ttft_at_sla_ms: float | None  # at the SLA percentile
    itl_at_sla_ms: float | None
    failed: int  # anything but ok
    ttft_mean_ms: float | None = None
    itl_mean_ms: float | None = None
    e2e_p50_ms: float | None = None
    e2e_p90_ms: float | None = None
    e2e_p99_ms: float | None = None
    queue_p90_ms: float | None = None
    outcomes: tuple[tuple[Outcome, int], ...] = ()
    input_tokens_per_s: float = 0.0  # prompts of requests served or being served
    output_tokens_per_s: float = 0.0  # tokens sent back

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        span = max(self.t1_s - self.t0_s, 1e-9)
        return {
            "t0Seconds": self.t0_s,
            "t1Seconds": self.t1_s,
            "requests": self.requests,
            "failed": self.failed,
            "arrivalRatePerS": round(self.load.arrival_rate_per_s, 4),
            "islTokensMean": round(self.load.isl_tokens_mean, 2),
            "oslTokensMean": round(self.load.osl_tokens_mean, 2),
            "rejectedFraction": round(self.load.rejected_fraction, 4),
            "ttftP50Ms": r(self.ttft_p50_ms),
            "ttftP90Ms": r(self.ttft_p90_ms),
            "itlP50Ms": r(self.itl_p50_ms),
            "itlP90Ms": r(self.itl_p90_ms),
            "e2eP50Ms": r(self.e2e_p50_ms),
            "e2eP90Ms": r(self.e2e_p90_ms),
            "e2eP99Ms": r(self.e2e_p99_ms),
            "queueP90Ms": r(self.queue_p90_ms),
            "outcomesPerS": {o.value: round(n / span, 4) for o, n in self.outcomes},
            "inputTokensPerS": round(self.input_tokens_per_s, 2),
            "outputTokensPerS": round(self.output_tokens_per_s, 2),
        }


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def window_stats(
    records: Iterable[RequestRecord],
    t0_s: float,
    t1_s: float,
    percentile: float = 90.0,
    by: WindowBy = WindowBy.ARRIVAL,
    ttft_target_ms: float | None = None,
) -> WindowStats:
    """Load, outcomes and latency of the requests of [t0_s, t1_s). Every request counts as
    demand; lengths and latencies come from the requests that have them (see the module doc).
    With `ttft_target_ms`, the TTFT percentile leaves out requests whose prefill alone (TTFT
    less time queued) took longer than the target: no pool size brings those under it."""
    if t1_s <= t0_s:
        raise ValueError(f"window must have t1_s > t0_s, got [{t0_s}, {t1_s})")

    def when(r: RequestRecord) -> float:
        return r.arrived_at_s if by is WindowBy.ARRIVAL else r.finished_at_s

    inside = [r for r in records if t0_s <= when(r) < t1_s]
    span = t1_s - t0_s
    completed = [r for r in inside if r.status is RequestStatus.OK]
    prompts = [r for r in inside if r.isl_tokens > 0]
    isl = np.array([r.isl_tokens for r in prompts], dtype=np.float64)
    osl = np.array([r.osl_tokens for r in completed], dtype=np.float64)
    cached = sum(r.cached_tokens or 0 for r in prompts)
    refused = sum(1 for r in inside if refused_for_capacity(r))
    peak = None
    if inside:
        # The arrival spread of these requests: its busiest few seconds over its mean.
        arrivals = np.array([r.arrived_at_s for r in inside])
        lo, hi = float(arrivals.min()), float(arrivals.max())
        bins = max(1, math.ceil(max(hi - lo, span) / PEAK_WINDOW_S))
        counts = np.histogram(arrivals, bins=bins, range=(lo, lo + bins * PEAK_WINDOW_S))[0]
        peak = len(inside) / span * float(counts.max()) / max(float(counts.mean()), 1e-9)

    def cv(a: np.ndarray) -> float:
        return float(a.std() / a.mean()) if len(a) > 1 and a.mean() > 0 else 0.0

    load = LoadObservation(
        arrival_rate_per_s=len(inside) / span,
        isl_tokens_mean=float(isl.mean()) if len(isl) else 0.0,
        osl_tokens_mean=float(osl.mean()) if len(osl) else 0.0,
        isl_tokens_cv=cv(isl),
        osl_tokens_cv=cv(osl),
        peak_arrival_rate_per_s=peak,
        cached_fraction=min(1.0, cached / float(isl.sum())) if len(isl) and isl.sum() else 0.0,
        rejected_fraction=refused / len(inside) if inside else 0.0,
    )
    served = [r for r in inside if r.ttft_ms is not None]
    ttft = [
        r.ttft_ms
        for r in served
        if r.ttft_ms is not None
        and (ttft_target_ms is None or r.ttft_ms - (r.queue_ms or 0.0) <= ttft_target_ms)
    ]
    itl = [r.itl_ms for r in completed if r.itl_ms is not None]
    e2e = [r.e2e_ms for r in completed]
    queue = [r.queue_ms for r in inside if r.queue_ms is not None]
    tally: dict[Outcome, int] = {}
    for r in inside:
        tally[outcome(r)] = tally.get(outcome(r), 0) + 1
    return WindowStats(
        t0_s=t0_s,
        t1_s=t1_s,
        requests=len(inside),
        load=load,
        ttft_p50_ms=_pct(ttft, 50),
        ttft_p90_ms=_pct(ttft, 90),
        itl_p50_ms=_pct(itl, 50),
        itl_p90_ms=_pct(itl, 90),
        ttft_at_sla_ms=_pct(ttft, percentile),
        itl_at_sla_ms=_pct(itl, percentile),
        failed=len(inside) - len(completed),
        ttft_mean_ms=_mean(ttft),
        itl_mean_ms=_mean(itl),
        e2e_p50_ms=_pct(e2e, 50),
        e2e_p90_ms=_pct(e2e, 90),
        e2e_p99_ms=_pct(e2e, 99),
        queue_p90_ms=_pct(queue, 90),
        outcomes=tuple(sorted(tally.items())),
        input_tokens_per_s=float(sum(r.isl_tokens for r in served)) / span,
        output_tokens_per_s=float(sum(r.osl_tokens for r in inside)) / span,
    )


@dataclass(frozen=True)
class PoolGroups:
    """A pool's size as the cluster reports it: groups asked for and groups serving, and whether
    a rollout is replacing its groups."""

    desired: int
    ready: int
    rolling: bool = False

    def __post_init__(self) -> None:
        if self.desired < 0 or self.ready < 0:
            raise ValueError(f"pool groups must be >= 0, got desired {self.desired}, ready {self.ready}")


_UNSETTLED = (GroupState.STARTING, GroupState.RESTARTING)  # draining is a shrink under way: no hold


def pool_observation(
    role: Role,
    groups: PoolGroups,
    workers: Sequence[WorkerGroup],
    latency_ms: float | None,
    mean_latency_ms: float | None = None,
) -> ObservedPool:
    """One pool from its size and its registrations (state, queue depth, KV use).

    Groups are ready when the cluster says so and, once registrations exist, when they are live:
    a dead or restarting group does not serve, whatever its pods say.
    """
    mine = [w for w in workers if w.role is role]
    live = [w for w in mine if w.state is GroupState.LIVE]
    ready = min(groups.ready, groups.desired) if groups.desired else groups.ready
    if mine:
        ready = min(ready, len(live))
    unsettled = groups.rolling or any(w.state in _UNSETTLED for w in mine) or groups.ready < groups.desired
    queued = sum(w.queue_depth for w in live)
    total = sum(w.kv_blocks_total for w in live)
    used = sum(w.kv_blocks_total - w.kv_blocks_free for w in live)
    kv_tokens = sum((w.kv_blocks_total - w.kv_blocks_free) * w.block_size_tokens for w in live)
    common: dict[str, Any] = {
        "role": role,
        "ready_groups": ready,
        "starting_groups": max(0, groups.desired - ready),
        "latency_ms": latency_ms,
        "mean_latency_ms": mean_latency_ms,
        "unsettled": unsettled,
    }
    if role is Role.PREFILL:
        return ObservedPool(**common, queued_requests=queued)
    return ObservedPool(
        **common,
        running_requests=queued,
        inflight_kv_tokens=kv_tokens,
        utilization=min(1.0, used / total) if total else None,
    )


def in_flight(workers: Sequence[WorkerGroup]) -> int:
    """Requests held by live groups right now (waiting or running, both pools)."""
    return sum(w.queue_depth for w in workers if w.state is GroupState.LIVE)


def tick_from(
    stats: WindowStats,
    prefill: PoolGroups,
    decode: PoolGroups,
    workers: Sequence[WorkerGroup],
    *,
    in_flight_growth: int = 0,
) -> TickInput:
    """The core's input. `stats` should be by finish time; `in_flight_growth` (requests in
    flight now minus at the window's start) turns its ends into arrivals."""
    span = max(stats.t1_s - stats.t0_s, 1e-9)
    rate = max(0.0, (stats.requests + in_flight_growth) / span)
    peak = stats.load.peak_arrival_rate_per_s
    if peak is not None and stats.load.arrival_rate_per_s > 0:
        peak *= rate / stats.load.arrival_rate_per_s
    load = replace(stats.load, arrival_rate_per_s=rate, peak_arrival_rate_per_s=peak)
    return TickInput(
        at_s=stats.t1_s,
        load=load,
        prefill=pool_observation(Role.PREFILL, prefill, workers, stats.ttft_at_sla_ms, stats.ttft_mean_ms),
        decode=pool_observation(Role.DECODE, decode, workers, stats.itl_at_sla_ms, stats.itl_mean_ms),
    )


class RedisObserver:
    """Reads one deployment's request stream incrementally and its worker registry.

    Keeps the records of the last `history_s` seconds (by arrival) in memory: a restart re-reads
    them from the stream, so nothing the planner decides on lives only here.
    """

    def __init__(self, client: Any, keys: DeploymentKeys, history_s: float = 3600.0) -> None:
        self.client, self.keys, self.history_s = client, keys, history_s
        self._after = "0-0"
        self._records: deque[RequestRecord] = deque()
        self._lock = asyncio.Lock()

    async def refresh(self, now_s: float) -> list[RequestRecord]:
        """Pull new records; returns every kept record, oldest arrival first."""
        async with self._lock:
            while True:
                batch, self._after = await read_request_records(self.client, self.keys, self._after, 2000)
                self._records.extend(batch)
                if len(batch) < 2000:
                    break
            horizon = now_s - self.history_s
            kept = sorted(
                (r for r in self._records if r.arrived_at_s >= horizon), key=lambda r: r.arrived_at_s
            )
            self._records = deque(kept)
            return list(kept)

    async def workers(self) -> list[WorkerGroup]:
        """Every registered group in any state (live, draining, restarting, failed): the dashboard's
        group health shows them all, and draining groups still hold requests in flight."""
        return await WorkerRegistry(self.client, self.keys).groups()
