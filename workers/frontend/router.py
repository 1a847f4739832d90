"""Routing: which prefill group and which decode group serve a request.

Pure core (`choose_route`): a decode group with free KV capacity for the request (the most free
blocks wins) and a prefill group by queue depth (the shortest wins). The registry's numbers are
as old as the group's last heartbeat, so the router adds what it sent since then (`Inflight`)
before comparing: without that, a burst would all land on whichever group looked emptiest.

When no live prefill group exists (an aggregated deployment, or every prefill group down), the
decode group computes the prompt itself: a slower answer beats a 503.

`RegistryCache` is the I/O edge: it refreshes the live groups from Redis in the background and
keeps serving from its last good copy while Redis is away or restarts empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis.exceptions
from moeplane.api.enums import Role
from moeplane.workers.frontend.errors import InvalidRequest, NoCapacity

from moeplane.bus.registry import WorkerGroup, WorkerRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    decode: WorkerGroup
    prefill: WorkerGroup | None  # None: the decode group computes the prompt (aggregated)
    decode_blocks: int  # blocks the request may take on the decode group


@dataclass
class Reservation:
    """A request this frontend sent to a group, not yet visible in the group's heartbeat."""

    group_id: str
    blocks: int
    sent_at_s: float  # the group's stats include the request once a heartbeat is newer than this


@dataclass
class Inflight:
    """What this frontend has sent to each group; entries leave when their request ends."""

    reservations: dict[str, list[Reservation]] = field(default_factory=dict)

    def add(self, group_id: str, blocks: int, at_s: float) -> Reservation:
        r = Reservation(group_id, blocks, at_s)
        self.reservations.setdefault(group_id, []).append(r)
        return r

    def remove(self, r: Reservation) -> None:
        rs = self.reservations.get(r.group_id, [])
        with contextlib.suppress(ValueError):
            rs.remove(r)
        if not rs:
            self.reservations.pop(r.group_id, None)

    def unseen(self, group: WorkerGroup) -> tuple[int, int]:
        """(requests, blocks) sent to `group` after its last heartbeat was taken."""
        rs = [r for r in self.reservations.get(group.group_id, ()) if r.sent_at_s >= group.heartbeat_at_s]
        return len(rs), sum(r.blocks for r in rs)


def choose_route(
    groups: Iterable[WorkerGroup],
    model: str,
    prompt_tokens: int,
    max_tokens: int,
    inflight: Inflight,
    exclude: frozenset[str] = frozenset(),
    retry_after_s: int = 1,
) -> Route:
    """Pick (prefill, decode) for a request; NoCapacity when nothing can take it now.

    A request needs `prompt_tokens + max_tokens` tokens of KV on one DP rank of its decode group
    and `prompt_tokens` on one rank of its prefill group. Raises InvalidRequest when it exceeds
    what a whole rank of every decode group holds, since waiting would never help.
    """
    live = [g for g in groups if g.model == model and g.group_id not in exclude]
    decode = [g for g in live if g.role is Role.DECODE]
    prefill = [g for g in live if g.role is Role.PREFILL]
    if not decode:
        raise NoCapacity(f"no live decode group serves {model!r}", retry_after_s=retry_after_s)

    total = prompt_tokens + max_tokens
    rank_capacity = max(g.kv_blocks_total // g.ep_size for g in decode)
    if all(g.blocks_for(total) > g.kv_blocks_total // g.ep_size for g in decode):
        need = min(g.blocks_for(total) for g in decode)
        raise InvalidRequest(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) needs {need} KV blocks on one "
            f"rank, but a decode rank holds at most {rank_capacity}; lower max_tokens or the prompt",
            param="max_tokens",
            code="context_length_exceeded",
        )

    def decode_free(g: WorkerGroup) -> int:
        _, blocks = inflight.unseen(g)
        return g.kv_blocks_free - blocks

    # It must fit on one rank (the emptiest one's count); the most free blocks overall wins.
    fits = [g for g in decode if min(decode_free(g), g.max_blocks_per_rank) >= g.blocks_for(total)]
    if not fits:
        raise NoCapacity(
            f"no decode group has {min(g.blocks_for(total) for g in decode)} free KV blocks on a rank "
            f"for this request ({prompt_tokens} prompt + {max_tokens} max tokens); retry shortly",
            retry_after_s=retry_after_s,
        )
    best_decode = max(fits, key=lambda g: (decode_free(g), -_queue(g, inflight), g.group_id))

    def prefill_load(g: WorkerGroup) -> tuple[int, int, str]:
        return (_queue(g, inflight), -g.kv_blocks_free, g.group_id)

    # A prefill group short of blocks right now still queues the request; it is only ranked last.
    best_prefill = min(
        prefill,
        key=lambda g: (g.max_blocks_per_rank < g.blocks_for(prompt_tokens), *prefill_load(g)),
        default=None,
    )
    return Route(best_decode, best_prefill, best_decode.blocks_for(total))


def _queue(g: WorkerGroup, inflight: Inflight) -> int:
    requests, _ = inflight.unseen(g)
    return g.queue_depth + requests


class RegistryCache:
    """The live groups, refreshed every `refresh_s`; a group stays for `hold_s` after its last sighting.

    A group's age (time since it was last seen) only grows between successful reads, so while
    Redis is unreachable nothing ages out and routing goes on from the last copy; after a
    restart that lost the data, groups reappear with their next heartbeat well within `hold_s`.
    A group that stopped heartbeating is dropped after `hold_s` of reads that miss it.
    """

    def __init__(self, registry: WorkerRegistry, refresh_s: float = 0.5, hold_s: float | None = None) -> None:
        self.registry = registry
        self.refresh_s = refresh_s
        self.hold_s = registry.ttl_s if hold_s is None else hold_s
        self._seen: dict[str, tuple[WorkerGroup, float]] = {}  # id -> (latest record, age in s)
        self._last_ok_s: float | None = None
        self.last_error: str | None = None
        self.num_errors = 0
        self._suspect: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()

    async def refresh(self) -> bool:
        try:
            groups = await self.registry.live_groups()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            self.num_errors += 1
            if self.last_error is None:
                log.warning("registry unreachable, routing from the cached copy: %s", exc)
            self.last_error = str(exc)
            return False
        now = time.monotonic()
        # Ages grow only between two successful reads, by at most two refresh periods: neither a
        # Redis outage nor a stall of this process is evidence that a group died.
        elapsed = 0.0
        if self.last_error is None and self._last_ok_s is not None:
            elapsed = min(now - self._last_ok_s, 2 * self.refresh_s)
        else:
            if self.last_error is not None:
                log.info("registry reachable again")
        self.last_error = None
        self._last_ok_s = now
        aged = {gid: (g, age + elapsed) for gid, (g, age) in self._seen.items()}
        aged.update({g.group_id: (g, 0.0) for g in groups})
        self._seen = {gid: (g, age) for gid, (g, age) in aged.items() if age <= self.hold_s}
        self._changed.set()
        return True

    def groups(self) -> list[WorkerGroup]:
        now = time.monotonic()
        self._suspect = {gid: until for gid, until in self._suspect.items() if until > now}
        return [g for gid, (g, _) in sorted(self._seen.items()) if gid not in self._suspect]

    def suspect(self, group_id: str, for_s: float | None = None) -> None:
        """Route around a group that just failed a call, until it proves alive again."""
        self._suspect[group_id] = time.monotonic() + (self.hold_s if for_s is None else for_s)

    @property
    def staleness_s(self) -> float:
        """Seconds since the last successful read (inf before the first)."""
        return float("inf") if self._last_ok_s is None else time.monotonic() - self._last_ok_s

    def counts(self) -> dict[Role, int]:
        out = dict.fromkeys(Role, 0)
        for g in self.groups():
            out[g.role] += 1
        return out

    async def wait_for(self, roles: Sequence[Role], timeout_s: float) -> None:
        """Until at least one group of each role is cached (start-up)."""
        deadline = time.monotonic() + timeout_s
        while not all(self.counts()[r] for r in roles):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no live {', '.join(roles)} groups registered within {timeout_s:g} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self.refresh_s)

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.refresh_s)

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="moeplane-registry-cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._stop.set()
            await self._task
            self._task = None
