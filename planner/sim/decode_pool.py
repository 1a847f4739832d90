"""The simulated decode pool: fluid per group.

Each group runs steps of `step(batch per rank, mean context)`. Its step counter advances by
`tick / step` per tick; a sequence finishes when the counter passes its start plus its
remaining tokens (OSL - 1 over tokens per step), at the interpolated time. Sequences reserve
ISL + OSL tokens of KV cache; admission is FIFO by readiness while KV memory lasts, to the
least-loaded groups first. Per-group sums are kept incrementally and finished sequences are
removed lazily, so a tick costs a few passes over the live sequences.
"""

from __future__ import annotations

import numpy as np
from moeplane.planner.sim.groups import GroupTable
from moeplane.planner.sim.requests import RequestBook
from moeplane.planner.sim.truth import GroundTruth


def water_fill(counts: np.ndarray, m: int) -> np.ndarray:
    """[m] positions into `counts` for m new items so the counts end as even as possible, the
    emptiest first and interleaved, so any prefix of the items is balanced too."""
    order = np.argsort(counts, kind="stable")
    c = counts[order].astype(np.float64)
    prefix = np.cumsum(c)
    fill = np.arange(1, len(c) + 1) * c - prefix  # items that raise the k lowest to the k-th count
    j = int(np.searchsorted(fill, m, side="right"))
    level = (m + prefix[j - 1]) / j
    extra = np.floor(level - c[:j]).astype(np.int64)
    extra[: m - int(extra.sum())] += 1
    take = np.repeat(np.arange(j), extra)
    rank = np.arange(len(take)) - np.repeat(np.cumsum(extra) - extra, extra)
    return order[take[np.lexsort((take, c[take] + rank))]]


class DecodePool:
    def __init__(self, model: GroundTruth, book: RequestBook, *, kv_transfer_s_per_token: float) -> None:
        self.model, self.book = model, book
        self.kv_transfer_s_per_token = kv_transfer_s_per_token
        self.kv_need = book.isl + book.osl
        self.ctx = book.isl + book.osl / 2
        self.steps = np.maximum(book.osl - 1, 0) / model.output_tokens_per_step
        self.kv_cap = float(model.kv_tokens_per_rank * model.dp_ranks)  # per group
        self.groups = GroupTable()
        # per group
        self.batch = np.empty(0)
        self.ctx_sum = np.empty(0)
        self.kv_used = np.empty(0)
        self.steps_done = np.empty(0)
        # sequences (finished ones keep target = inf until compaction)
        self.req = np.empty(0, dtype=np.int64)
        self.group = np.empty(0, dtype=np.int64)
        self.target = np.empty(0)
        self.live = 0
        # waiting for a slot
        self.wait_req = np.empty(0, dtype=np.int64)
        self.wait_ready_s = np.empty(0)
        self.itl_samples: list[tuple[np.ndarray, np.ndarray]] = []

    def scale_to(self, groups: int, now_s: float, startup_s: float) -> None:
        self.groups.scale_to(groups, now_s, startup_s, self.batch)
        grow = len(self.groups) - len(self.batch)
        if grow:
            zeros = np.zeros(grow)
            self.batch, self.ctx_sum = np.append(self.batch, zeros), np.append(self.ctx_sum, zeros)
            self.kv_used, self.steps_done = np.append(self.kv_used, zeros), np.append(self.steps_done, zeros)

    def enqueue(self, req: np.ndarray, prefill_done_s: np.ndarray) -> None:
        """Requests whose first token came at `prefill_done_s`; their KV arrives after the transfer."""
        self.wait_req = np.concatenate([self.wait_req, req])
        ready = prefill_done_s + self.book.isl[req] * self.kv_transfer_s_per_token
        self.wait_ready_s = np.concatenate([self.wait_ready_s, ready])

    def queued(self, t: float) -> int:
        return int(np.sum(self.wait_ready_s <= t))

    def reserved_kv_tokens(self) -> float:
        return float(self.kv_used.sum() + self.kv_need[self.wait_req].sum())

    def tick(self, t0: float, t1: float) -> None:
        admitted, admitted_at = self._admit(t0, t1)
        busy = self.batch > 0
        if not busy.any():
            return
        step = np.full(len(self.batch), np.inf)
        step[busy] = self.model.decode_step_s_array(
            self.batch[busy] / self.model.dp_ranks, self.ctx_sum[busy] / self.batch[busy]
        )
        self.itl_samples.append(
            (step[busy] / self.model.output_tokens_per_step, self.batch[busy] * (t1 - t0))
        )
        if len(admitted):  # start counting at admission
            g = self.group[-len(admitted) :]
            self.target[-len(admitted) :] = (
                self.steps_done[g] + (admitted_at - t0) / step[g] + self.steps[admitted]
            )
        before = self.steps_done.copy()
        self.steps_done[busy] += (t1 - t0) / step[busy]
        done = np.flatnonzero(self.target <= self.steps_done[self.group])
        if len(done):
            g, req = self.group[done], self.req[done]
            self.book.finish(req, t0 + (self.target[done] - before[g]) * step[g])
            self._account(g, req, -1.0)
            self.target[done] = np.inf
            self.live -= len(done)
            if self.live < len(self.req) // 2:
                keep = np.isfinite(self.target)
                self.req, self.group, self.target = self.req[keep], self.group[keep], self.target[keep]

    def _account(self, g: np.ndarray, req: np.ndarray, sign: float) -> None:
        n = len(self.batch)
        self.batch += sign * np.bincount(g, minlength=n)
        self.ctx_sum += sign * np.bincount(g, weights=self.ctx[req], minlength=n)
        self.kv_used += sign * np.bincount(g, weights=self.kv_need[req], minlength=n)

    def _admit(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        none = (np.empty(0, dtype=np.int64), np.empty(0))
        serving = np.flatnonzero(self.groups.serving(t0)) if len(self.groups) else np.empty(0, dtype=np.int64)
        ready = np.flatnonzero(self.wait_ready_s <= t1)
        if len(ready) == 0 or len(serving) == 0:
            return none
        ready = ready[np.argsort(self.wait_ready_s[ready], kind="stable")]
        cand = self.wait_req[ready]
        slot = serving[water_fill(self.batch[serving], len(cand))]
        need = self.kv_need[cand]
        # KV reserved per group by the candidates up to each one, in FIFO order.
        by_group = np.argsort(slot, kind="stable")
        sorted_slot = slot[by_group]
        csum = np.cumsum(need[by_group])
        first = np.searchsorted(sorted_slot, sorted_slot, side="left")
        cum = np.empty(len(cand))
        cum[by_group] = csum - np.where(first > 0, csum[first - 1], 0.0)
        fits = cum <= self.kv_cap - self.kv_used[slot]
        take = len(cand) if fits.all() else int(np.argmin(fits))
        if take == 0:
            return none
        req, g = cand[:take], slot[:take]
        self.req = np.concatenate([self.req, req])
        self.group = np.concatenate([self.group, g])
        self.target = np.concatenate([self.target, np.full(take, np.nan)])
        self.live += take
        self._account(g, req, 1.0)
        admitted_at = np.maximum(self.wait_ready_s[ready[:take]], t0)
        keep = np.ones(len(self.wait_req), dtype=bool)
        keep[ready[:take]] = False
        self.wait_req, self.wait_ready_s = self.wait_req[keep], self.wait_ready_s[keep]
        return req, admitted_at

    def retire(self, t: float) -> None:
        """Draining groups leave once their last sequence is done."""
        g = self.groups
        for gid in np.flatnonzero(g.alive() & g.draining & (self.batch[: len(g)] <= 0)):
            g.removed_s[gid] = t

    def drain_itl_samples(self) -> tuple[np.ndarray, np.ndarray]:
        samples, self.itl_samples = self.itl_samples, []
        if not samples:
            return np.empty(0), np.empty(0)
        return np.concatenate([s[0] for s in samples]), np.concatenate([s[1] for s in samples])
