"""`AdmissionQueue`: requests wait here for capacity instead of being refused (vLLM's waiting queue,
one per frontend).

A request is admitted when a live decode group has KV blocks for its prompt plus a little headroom
(`router.choose_route`). If none does, or others are already waiting, it joins a bounded FIFO
queue and is admitted in arrival order as capacity appears: a registry refresh (heartbeats carry
the groups' free blocks) or a request ending wakes the queue. Only the head is tried, so a large
request is not starved by small ones behind it.

503 with Retry-After only when the queue is full (`max_queued_requests` new requests already wait)
or a request waited `queue_timeout_s`. A stream resuming after its group failed (already admitted
once) waits at the head, ahead of new requests, does not count against the bound, and waits until
the request's own deadline, since giving up on it would break a stream the client is reading.

`close()` (the frontend stopping) refuses every waiting and later request with a 503 at once, so a
shutdown does not wait out the queue's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from moeplane.workers.frontend.errors import NoCapacity
from moeplane.workers.frontend.router import Route

# A waiter re-checks at least this often even without a wake-up (a missed event costs this much).
_POLL_S = 0.5


@dataclass(eq=False)
class _Ticket:
    resuming: bool


class AdmissionQueue:
    def __init__(self, max_queued_requests: int, queue_timeout_s: float, retry_after_s: int = 1) -> None:
        if max_queued_requests < 0 or queue_timeout_s <= 0:
            raise ValueError(
                f"max_queued_requests ({max_queued_requests}) must be >= 0 and queue_timeout_s "
                f"({queue_timeout_s}) > 0"
            )
        self.max_queued_requests = max_queued_requests
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.num_rejected_full = 0
        self.num_timed_out = 0
        self._queue: deque[_Ticket] = deque()
        self._event = asyncio.Event()
        self._closed: str | None = None  # why nothing is admitted any more

    def close(self, reason: str) -> None:
        """Admit nothing more: waiting and new requests get NoCapacity naming `reason`."""
        self._closed = reason
        self.wake()

    @property
    def num_waiting(self) -> int:
        return len(self._queue)

    def wake(self) -> None:
        """Capacity may have changed: the head tries again."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def _check_open(self) -> None:
        if self._closed is not None:
            raise NoCapacity(self._closed, retry_after_s=self.retry_after_s)

    async def admit(self, route: Callable[[], Route], *, resuming: bool, deadline_s: float) -> Route:
        """A route for the request, waiting in line for it until `deadline_s` (monotonic; new
        requests wait at most `queue_timeout_s`). `route()` raises NoCapacity while nothing fits;
        any other error (an invalid request) propagates at once."""
        self._check_open()
        if not self._queue:
            with contextlib.suppress(NoCapacity):
                return route()
        new_waiting = sum(1 for t in self._queue if not t.resuming)
        if not resuming and new_waiting >= self.max_queued_requests:
            self.num_rejected_full += 1
            raise NoCapacity(
                f"the server is at capacity and {new_waiting} requests are already queued "
                f"(maxQueuedRequests {self.max_queued_requests}); retry shortly",
                retry_after_s=self.retry_after_s,
            )
        if not resuming:
            deadline_s = min(deadline_s, time.monotonic() + self.queue_timeout_s)
        ticket, started = _Ticket(resuming), time.monotonic()
        if resuming:  # behind the other resuming streams, ahead of every new request
            at = sum(1 for t in self._queue if t.resuming)
            self._queue.insert(at, ticket)
        else:
            self._queue.append(ticket)
        last: NoCapacity | None = None
        try:
            while True:
                self._check_open()
                if self._queue[0] is ticket:
                    try:
                        chosen = route()
                    except NoCapacity as exc:
                        last = exc
                    else:
                        self._queue.popleft()
                        self.wake()  # the next one may fit too
                        return chosen
                remaining = deadline_s - time.monotonic()
                if remaining <= 0:
                    self.num_timed_out += 1
                    waited = time.monotonic() - started
                    why = f": {last.message}" if last is not None else ""
                    limit = "the request timeout" if resuming else (
                        f"queueTimeoutSeconds {self.queue_timeout_s:g} (or the request timeout)"
                    )
                    raise NoCapacity(
                        f"no capacity came free in {waited:.1f} s of waiting, the most {limit} allows{why}",
                        retry_after_s=self.retry_after_s,
                    )
                event = self._event
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, _POLL_S))
        finally:
            if ticket in self._queue:
                self._queue.remove(ticket)
                self.wake()
