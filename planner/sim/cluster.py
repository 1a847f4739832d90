"""The simulated P/D cluster: a prefill pool and a decode pool advanced tick by tick.

Aggregated per group and vectorised over requests, so a DeepSeek-R1 cluster of hundreds of
nodes and millions of requests runs in seconds (see `prefill_pool.py` and `decode_pool.py`).

A request's TTFT is its prefill finish minus its arrival; its ITL is its decode finish minus its
first token over OSL - 1 (KV transfer and waiting for a decode slot included). Requests that
cannot fit one rank's KV memory, wait past the timeout, or are still in flight when the drain
limit ends are counted failed: every request ends completed or failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from moeplane.api.enums import Role
from moeplane.planner.config import SlaTargets
from moeplane.planner.perf.profile import ProfiledModel
from moeplane.planner.sim.decode_pool import DecodePool
from moeplane.planner.sim.prefill_pool import PrefillPool
from moeplane.planner.sim.requests import PENDING, RequestBook
from moeplane.planner.sim.traces import Trace
from moeplane.planner.sim.truth import EXACT, GroundTruth, ModelError
from moeplane.planner.tick import ObservedPool, TickInput


@dataclass(frozen=True)
class SimConfig:
    sla: SlaTargets
    interval_s: float = 60.0  # planner period
    tick_s: float = 1.0  # simulation time step
    startup_s: float = 120.0  # a new group serves this long after it is asked for
    peak_window_s: float = 5.0  # windows of the observed peak arrival rate
    request_timeout_s: float = 600.0  # a request whose first token would come later fails
    drain_limit_s: float = 3600.0  # after the trace: time left for requests in flight
    kv_transfer_s_per_token: float = 0.0  # prefill -> decode KV transfer
    prefill_batch_tokens: float = 8192.0
    # How the simulated hardware differs from the planner's model (the planner is not told).
    truth: ModelError = EXACT
    # The first seconds of the trace give the planner history; requests arriving in them are not
    # scored and their GPU time is not counted.
    warmup_s: float = 0.0

    def __post_init__(self) -> None:
        if self.tick_s <= 0 or self.interval_s < self.tick_s or self.warmup_s < 0:
            raise ValueError(
                f"sim needs tick_s > 0, interval_s >= tick_s and warmup_s >= 0, got "
                f"{self.tick_s}, {self.interval_s}, {self.warmup_s}"
            )


class Cluster:
    """The cluster replaying one trace. `advance(t1)` moves time; `observe` and `scale_to` are
    what a policy sees and does at interval boundaries."""

    def __init__(self, trace: Trace, prefill: ProfiledModel, decode: ProfiledModel, cfg: SimConfig) -> None:
        self.trace, self.cfg = trace, cfg
        self.book = RequestBook(trace)
        true_prefill, true_decode = GroundTruth(prefill, cfg.truth), GroundTruth(decode, cfg.truth)
        # A sequence lives on one DP rank: longer than its KV memory, it can never be served.
        self.book.fail(np.flatnonzero(self.book.isl + self.book.osl > true_decode.kv_tokens_per_rank))
        self.prefill = PrefillPool(
            true_prefill,
            self.book,
            batch_tokens=cfg.prefill_batch_tokens,
            timeout_s=cfg.request_timeout_s,
        )
        self.decode = DecodePool(
            true_decode,
            self.book,
            kv_transfer_s_per_token=cfg.kv_transfer_s_per_token,
        )
        self.now_s = 0.0

    def scale_to(self, prefill_groups: int, decode_groups: int, *, ready_now: bool = False) -> None:
        startup = 0.0 if ready_now else self.cfg.startup_s
        self.prefill.scale_to(prefill_groups, self.now_s, startup)
        self.decode.scale_to(decode_groups, self.now_s, startup)

    def advance(self, until_s: float) -> None:
        book = self.book
        while self.now_s < until_s - 1e-9:
            t0, t1 = self.now_s, min(until_s, self.now_s + self.cfg.tick_s)
            started, done = self.prefill.tick(t0, t1)
            book.first_token_s[started] = done
            single = self.decode.steps[started] <= 0  # one output token: done at the first
            book.finish(started[single], done[single])
            self.decode.enqueue(started[~single], done[~single])
            self.decode.tick(t0, t1)
            self.prefill.retire(t1, self.cfg.tick_s)
            self.decode.retire(t1)
            self.now_s = t1

    def observe(self, t0: float, t1: float) -> TickInput:
        """What the planner's adapters would read for the interval [t0, t1)."""
        p = self.cfg.sla.percentile
        book = self.book
        load = self.trace.load_between(t0, t1, self.cfg.peak_window_s)
        came = self.trace.between(t0, t1)
        if came.stop > came.start:
            load = replace(load, prefill_service_s=float(self.prefill.modelled_service_s[came].mean()))
        first = (book.first_token_s >= t0) & (book.first_token_s < t1)
        # Prompts whose own prefill step exceeds the target miss it however many groups run:
        # left out, as the live observer leaves out requests whose prefill alone took longer.
        first &= self.prefill.floor_s * 1e3 <= self.cfg.sla.ttft_ms
        ttft = (book.first_token_s - book.arrival_s)[first]
        p_ready, p_start = self.prefill.groups.counts(t1)
        lanes = p_ready * self.prefill.model.dp_ranks
        util = min(1.0, self.prefill.busy_s / (lanes * (t1 - t0))) if lanes else None
        modelled = self.prefill.modelled_busy_s
        service_ratio = self.prefill.busy_s / modelled if modelled > 0 else None
        self.prefill.busy_s = self.prefill.modelled_busy_s = 0.0
        prefill = ObservedPool(
            Role.PREFILL,
            p_ready,
            p_start,
            float(np.percentile(ttft, p) * 1e3) if len(ttft) else None,
            mean_latency_ms=float(np.mean(ttft) * 1e3) if len(ttft) else None,
            running_requests=self.prefill.running(t1),
            queued_requests=self.prefill.queued,
            utilization=util,
            service_ratio=service_ratio,
        )
        values, weights = self.decode.drain_itl_samples()
        itl_ms = _weighted_percentile(values, weights, p) * 1e3 if len(values) else None
        d_ready, d_start = self.decode.groups.counts(t1)
        kv_tokens = self.decode.reserved_kv_tokens()
        kv_cap = self.decode.kv_cap * max(d_ready, 1)
        decode = ObservedPool(
            Role.DECODE,
            d_ready,
            d_start,
            itl_ms,
            mean_latency_ms=float(np.average(values, weights=weights) * 1e3) if len(values) else None,
            running_requests=self.decode.live,
            queued_requests=self.decode.queued(t1),
            inflight_kv_tokens=int(kv_tokens),
            utilization=min(1.0, kv_tokens / kv_cap),
        )
        return TickInput(t1, load, prefill, decode)

    def nodes_now(self) -> tuple[int, int]:
        p, d = self.prefill, self.decode
        return (
            int(p.groups.alive().sum()) * p.model.nodes_per_group,
            int(d.groups.alive().sum()) * d.model.nodes_per_group,
        )

    def unresolved(self) -> int:
        return self.book.unresolved()

    def fail_unresolved(self) -> None:
        self.book.fail(np.flatnonzero(self.book.status == PENDING))


def _weighted_percentile(values: np.ndarray, weights: np.ndarray, percentile: float) -> float:
    if len(values) == 0 or weights.sum() <= 0:
        return math.nan
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    at = min(len(values) - 1, int(np.searchsorted(cum, cum[-1] * percentile / 100)))
    return float(values[order][at])
