"""The simulated prefill pool: every attention DP rank of every group is a lane.

Requests wait in one FIFO; a waiting request goes to a lane as soon as that lane frees up
(the router's shortest-queue choice), and finishes at `max(lane free + service, arrival + own
step)` — the M/G/c model the planner sizes with (`perf/capacity.py`), played request by request.
A request computes only its uncached prompt tokens (`Trace.cached_tokens`): its step runs those
tokens at its prompt's length.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
from moeplane.planner.sim.groups import GroupTable
from moeplane.planner.sim.requests import PENDING, RequestBook
from moeplane.planner.sim.truth import GroundTruth

# Service and floor times of recent (trace, truth, batch) triples: several policies replay the
# same trace, and these arrays are most of a replay's set-up.
_TIMES: OrderedDict[tuple[Any, ...], tuple[Any, np.ndarray, np.ndarray]] = OrderedDict()
_TIMES_KEPT = 4


def request_times(
    book: RequestBook, model: GroundTruth, batch_tokens: float
) -> tuple[np.ndarray, np.ndarray]:
    """[N] service seconds (a request's share of a batched step) and [N] floor seconds (its own
    step) of every request of the book's trace."""
    key = (id(book.trace), id(model.model.profile), model.error, batch_tokens)
    hit = _TIMES.get(key)
    if hit is not None and hit[0] is book.trace:
        _TIMES.move_to_end(key)
        return hit[1], hit[2]
    isl = book.isl
    new = np.maximum(isl - book.trace.cached, 1.0)
    n_eff = np.maximum(new, batch_tokens)
    service = new * model.prefill_step_s_array(n_eff, isl) / n_eff
    floor = model.prefill_step_s_array(new, isl)
    _TIMES[key] = (book.trace, service, floor)
    while len(_TIMES) > _TIMES_KEPT:
        _TIMES.popitem(last=False)
    return service, floor


class PrefillPool:
    def __init__(
        self,
        model: GroundTruth,
        book: RequestBook,
        *,
        batch_tokens: float,
        timeout_s: float,
    ) -> None:
        self.model, self.book, self.timeout_s = model, book, timeout_s
        self.service_s, self.floor_s = request_times(book, model, batch_tokens)
        # What the planner's model says the same requests take (the truth without its error).
        self.modelled_service_s = (
            self.service_s
            if model.error.exact
            else request_times(book, GroundTruth(model.model), batch_tokens)[0]
        )
        self.modelled_busy_s = 0.0
        self.groups = GroupTable()
        self.lane_free = np.empty(0)
        self.lane_group = np.empty(0, dtype=np.int64)
        self._queue = np.flatnonzero(book.status == PENDING)  # admissible requests, arrival order
        self._queue_arrival_s = book.arrival_s[self._queue]
        self._head = 0  # queue[head:tail] are waiting
        self._tail = 0
        self.busy_s = 0.0  # lane-seconds of service started since the last observation

    @property
    def queued(self) -> int:
        return self._tail - self._head

    def scale_to(self, groups: int, now_s: float, startup_s: float) -> None:
        load = np.zeros(len(self.groups))
        if len(self.lane_group):
            np.maximum.at(load, self.lane_group, self.lane_free)
        before = len(self.groups)
        self.groups.scale_to(groups, now_s, startup_s, load)
        dp = self.model.dp_ranks
        for g in range(before, len(self.groups)):
            self.lane_free = np.append(self.lane_free, np.full(dp, self.groups.ready_s[g]))
            self.lane_group = np.append(self.lane_group, np.full(dp, g))

    def tick(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Dispatch to lanes freeing up before t1; returns (requests started, their finish times)."""
        self._tail = int(np.searchsorted(self._queue_arrival_s, t1, side="left"))
        serving = self.groups.serving(t0)
        lanes = (
            np.flatnonzero(serving[self.lane_group]) if len(self.lane_group) else np.empty(0, dtype=np.int64)
        )
        taken: list[np.ndarray] = []
        finished: list[np.ndarray] = []
        while self._head < self._tail and len(lanes):
            open_ = lanes[self.lane_free[lanes] < t1]
            if len(open_) == 0:
                break
            k = min(len(open_), self._tail - self._head)
            order = open_[np.argsort(self.lane_free[open_], kind="stable")][:k]
            req = self._queue[self._head : self._head + k]
            self._head += k
            finish = np.maximum(
                self.lane_free[order] + self.service_s[req], self.book.arrival_s[req] + self.floor_s[req]
            )
            self.lane_free[order] = finish
            taken.append(req)
            finished.append(finish)
        self._expire(t1)
        if not taken:
            return np.empty(0, dtype=np.int64), np.empty(0)
        started, done = np.concatenate(taken), np.concatenate(finished)
        self.busy_s += float(self.service_s[started].sum())
        self.modelled_busy_s += float(self.modelled_service_s[started].sum())
        late = done - self.book.arrival_s[started] > self.timeout_s
        self.book.fail(started[late])
        return started[~late], done[~late]

    def _expire(self, t: float) -> None:
        """Requests still waiting past the timeout fail (the client gave up); oldest first."""
        waiting = self._queue_arrival_s[self._head : self._tail]
        late = int(np.searchsorted(waiting, t - self.timeout_s, side="left"))
        if late:
            self.book.fail(self._queue[self._head : self._head + late])
            self._head += late

    def retire(self, t: float, tick_s: float) -> None:
        """Draining groups leave once their lanes are idle."""
        g = self.groups
        for gid in np.flatnonzero(g.alive() & g.draining):
            last = float(self.lane_free[self.lane_group == gid].max())
            if last <= t:
                g.removed_s[gid] = max(last, t - tick_s)

    def running(self, t: float) -> int:
        """Requests being prefilled at t (dispatched to a lane, first token still to come)."""
        return int(np.sum(self.book.first_token_s[self._queue[: self._head]] > t))
