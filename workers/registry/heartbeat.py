"""The heartbeat loop that keeps a worker group's registration alive.

It publishes whatever `snapshot()` returns every `interval_s`. If the snapshot fails (the group
does not answer) nothing is published, so the group's TTL runs out and routers stop sending it
work: liveness is "answered recently", never "was started once". Redis outages are retried on
the next beat; the loop itself never dies of them. A beat the registry refuses (its snapshot
carries an incarnation older than the group's fence: the supervisor changed the group's state
while the beat was in flight) is counted in `num_superseded` and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import redis.exceptions

from moeplane.bus.registry import RegistryError, WorkerGroup, WorkerRegistry

log = logging.getLogger(__name__)

Snapshot = Callable[[], Awaitable[WorkerGroup]]


class Heartbeat:
    def __init__(self, registry: WorkerRegistry, snapshot: Snapshot, interval_s: float = 1.0) -> None:
        if not 0 < interval_s < registry.ttl_s:
            raise RegistryError(
                f"heartbeat interval_s must be in (0, ttl_s={registry.ttl_s}), got {interval_s}: "
                "a group would expire between its own heartbeats"
            )
        self.registry = registry
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.num_published = 0
        self.num_failed = 0
        self.num_superseded = 0
        self.last_group: WorkerGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._redis_down = False
        self._silent = False  # the group stopped answering (logged once, not once per beat)

    async def beat_once(self) -> bool:
        """One heartbeat; False (and logged) when the group or Redis did not answer."""
        try:
            group = await self.snapshot()
        except Exception as exc:  # The group is unreachable or broken: let its TTL lapse.
            self.num_failed += 1
            if not self._silent:
                log.warning("heartbeat: no snapshot, the registration will lapse: %s", _one_line(exc))
            self._silent = True
            return False
        self._silent = False
        try:
            stored = await self.registry.publish(group)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            self.num_failed += 1
            if not self._redis_down:  # once per outage, not once per beat
                log.warning("heartbeat of %s: Redis unavailable, retrying: %s", group.group_id, exc)
            self._redis_down = True
            return False
        if self._redis_down:
            log.info("heartbeat of %s: Redis reachable again", group.group_id)
        self._redis_down = False
        if not stored:
            self.num_superseded += 1
            return False
        self.num_published += 1
        self.last_group = group
        return True

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.beat_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="moeplane-heartbeat")

    async def stop(self, deregister: bool = True) -> None:
        """Stop beating; with `deregister`, remove the registration now instead of at TTL expiry.

        The loop is asked to finish, not cancelled: redis-py does not reliably let a
        cancellation out of a transaction that is mid-flight.
        """
        if self._task is not None:
            self._stop.set()
            await self._task
            self._task = None
        if deregister and self.last_group is not None:
            try:
                await self.registry.remove(self.last_group.group_id)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                log.warning("could not deregister %s (its TTL will): %s", self.last_group.group_id, exc)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text[:limit]
