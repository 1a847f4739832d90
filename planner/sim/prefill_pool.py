"""The simulated prefill pool: every attention DP rank of every group is a lane.

Requests wait in one FIFO; a waiting request goes to a lane as soon as that lane frees up
(the router's shortest-queue choice), and finishes at `max(lane free + service, arrival + own
step)` — the M/G/c model the planner sizes with (`perf/capacity.py`), played request by request.
"""

from __future__ import annotations

import numpy as np
from moeplane.planner.perf.profile import ProfiledModel
from moeplane.planner.sim.groups import GroupTable
from moeplane.planner.sim.requests import PENDING, RequestBook


class PrefillPool:
    def __init__(
        self,
        model: ProfiledModel,
        book: RequestBook,
        *,
        batch_tokens: float,
        model_error: float,
        timeout_s: float,
    ) -> None:
        self.model, self.book, self.timeout_s = model, book, timeout_s
        isl = book.isl
        n_eff = np.maximum(isl, batch_tokens)
        # Service: the request's share of a batched step; floor: its own step.
        self.service_s = isl * model.prefill_step_s_array(n_eff, isl) / n_eff * model_error
        self.floor_s = model.prefill_step_s_array(isl, isl) * model_error
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
