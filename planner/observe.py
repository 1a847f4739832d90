"""Observe: from what the serving stack writes to Redis to the core's `TickInput`.

Pure part: `window_stats` and `tick_from` turn request records and worker registrations into the
interval's load and each pool's latency, queues and KV use. Edge: `RedisObserver` reads the
request stream incrementally (it keeps a bounded tail of recent records, so the dashboard and
what-if read the same window), the worker registry and the pools' EPLB status.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from moeplane.api.enums import Role
from moeplane.planner.tick import LoadObservation, PoolObservation, TickInput

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.registry import WorkerGroup, WorkerRegistry
from moeplane.bus.request_metrics import RequestRecord, RequestStatus, read_request_records

PEAK_WINDOW_S = 5.0


@dataclass(frozen=True)
class WindowStats:
    """Requests that arrived in [t0, t1): their load and latency percentiles (ms)."""

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
    failed: int

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {
            "t0Seconds": self.t0_s,
            "t1Seconds": self.t1_s,
            "requests": self.requests,
            "failed": self.failed,
            "arrivalRatePerS": round(self.load.arrival_rate_per_s, 4),
            "islTokensMean": round(self.load.isl_tokens_mean, 2),
            "oslTokensMean": round(self.load.osl_tokens_mean, 2),
            "ttftP50Ms": r(self.ttft_p50_ms),
            "ttftP90Ms": r(self.ttft_p90_ms),
            "itlP50Ms": r(self.itl_p50_ms),
            "itlP90Ms": r(self.itl_p90_ms),
        }


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def window_stats(
    records: Iterable[RequestRecord], t0_s: float, t1_s: float, percentile: float = 90.0
) -> WindowStats:
    """Load and latency of the requests that arrived in [t0_s, t1_s). Rejected requests count as
    load (they were asked for); latencies come from served ones only."""
    if t1_s <= t0_s:
        raise ValueError(f"window must have t1_s > t0_s, got [{t0_s}, {t1_s})")
    inside = [r for r in records if t0_s <= r.arrived_at_s < t1_s]
    span = t1_s - t0_s
    served = [r for r in inside if r.status is RequestStatus.OK]
    isl = np.array([r.isl_tokens for r in inside], dtype=np.float64)
    osl = np.array([r.osl_tokens for r in served], dtype=np.float64)
    peak = None
    if inside:
        bins = max(1, math.ceil(span / PEAK_WINDOW_S))
        counts = np.bincount(
            np.minimum(
                ((np.array([r.arrived_at_s for r in inside]) - t0_s) / span * bins).astype(int), bins - 1
            ),
            minlength=bins,
        )
        peak = float(counts.max()) / (span / bins)

    def cv(a: np.ndarray) -> float:
        return float(a.std() / a.mean()) if len(a) > 1 and a.mean() > 0 else 0.0

    load = LoadObservation(
        arrival_rate_per_s=len(inside) / span,
        isl_tokens_mean=float(isl.mean()) if len(isl) else 0.0,
        osl_tokens_mean=float(osl.mean()) if len(osl) else 0.0,
        isl_tokens_cv=cv(isl),
        osl_tokens_cv=cv(osl),
        peak_arrival_rate_per_s=peak,
    )
    ttft = [r.ttft_ms for r in served if r.ttft_ms is not None]
    itl = [r.itl_ms for r in served if r.itl_ms is not None]
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
        failed=sum(1 for r in inside if r.status is not RequestStatus.OK),
    )


@dataclass(frozen=True)
class PoolGroups:
    """A pool's size as the cluster reports it: groups asked for and groups serving."""

    desired: int
    ready: int

    def __post_init__(self) -> None:
        if self.desired < 0 or self.ready < 0:
            raise ValueError(f"pool groups must be >= 0, got desired {self.desired}, ready {self.ready}")


def pool_observation(
    role: Role, groups: PoolGroups, workers: Sequence[WorkerGroup], latency_ms: float | None
) -> PoolObservation:
    """One pool from its size and its live registrations (queue depth, KV use)."""
    mine = [w for w in workers if w.role is role]
    ready = min(groups.ready, groups.desired) if groups.desired else groups.ready
    queued = sum(w.queue_depth for w in mine)
    total = sum(w.kv_blocks_total for w in mine)
    used = sum(w.kv_blocks_total - w.kv_blocks_free for w in mine)
    kv_tokens = sum((w.kv_blocks_total - w.kv_blocks_free) * w.block_size_tokens for w in mine)
    if role is Role.PREFILL:
        return PoolObservation(
            role=role,
            ready_groups=ready,
            starting_groups=max(0, groups.desired - ready),
            latency_ms=latency_ms,
            queued_requests=queued,
        )
    return PoolObservation(
        role=role,
        ready_groups=ready,
        starting_groups=max(0, groups.desired - ready),
        latency_ms=latency_ms,
        running_requests=queued,
        inflight_kv_tokens=kv_tokens,
        utilization=min(1.0, used / total) if total else None,
    )


def tick_from(
    stats: WindowStats, prefill: PoolGroups, decode: PoolGroups, workers: Sequence[WorkerGroup]
) -> TickInput:
    return TickInput(
        at_s=stats.t1_s,
        load=stats.load,
        prefill=pool_observation(Role.PREFILL, prefill, workers, stats.ttft_at_sla_ms),
        decode=pool_observation(Role.DECODE, decode, workers, stats.itl_at_sla_ms),
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
        return await WorkerRegistry(self.client, self.keys).live_groups()
