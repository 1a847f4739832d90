"""Routing: which prefill group and which decode group serve a request.

Pure core (`choose_route`): among live groups, a decode group with free KV blocks for what the
request needs now, its prompt plus a little headroom (the most free blocks wins), and a prefill
group by queue depth (the shortest wins). A request is never held to its `max_tokens`: as it grows,
its decode rank takes blocks as they free up and preempts the newest sequence when none are left
(vLLM's policy). The registry's numbers are as old as the group's last heartbeat, so the router
adds what it sent since then (`Inflight`) before comparing: without that, a burst would all land
on whichever group looked emptiest.

When no live prefill group exists (an aggregated deployment, or every prefill group down), the
decode group computes the prompt itself: a slower answer beats a 503.

`RegistryCache` is the I/O edge: it refreshes every registration from Redis in the background
(all states, for /health and /metrics; only live ones are routed to) and keeps serving from its
last good copy while Redis is away or restarts empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import redis.exceptions
from moeplane.api.enums import Role
from moeplane.workers.frontend.errors import InvalidRequest, NoCapacity

from moeplane.bus.registry import GroupState, WorkerGroup, WorkerRegistry

log = logging.getLogger(__name__)

# Tokens a request reserves beyond its prompt when it is admitted: the next block's worth, so it can
# decode at once; later growth is the decode rank's scheduler's (preemption by recompute).
ADMISSION_HEADROOM_TOKENS = 16

GroupRef = tuple[str, int]  # (group id, incarnation): one run of a group


def ref(group: WorkerGroup) -> GroupRef:
    return (group.group_id, group.incarnation)


@dataclass(frozen=True)
class Route:
    decode: WorkerGroup
    prefill: WorkerGroup | None  # None: the decode group computes the prompt (aggregated)
    decode_blocks: int  # blocks the request needs now on the decode group (prompt + headroom)


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
    exclude: frozenset[GroupRef] = frozenset(),
    retry_after_s: int = 1,
    headroom_tokens: int = ADMISSION_HEADROOM_TOKENS,
) -> Route:
    """Pick (prefill, decode) for a request; NoCapacity when nothing can take it now.

    A request is admitted on `prompt_tokens` plus `headroom_tokens` (at most `max_tokens`) of KV
    on one DP rank of a live decode group, and is routed to a live prefill group for its prompt.
    Groups in `exclude` (runs that already failed this request) are skipped. Raises
    InvalidRequest when `prompt_tokens + max_tokens` exceeds a whole rank of every decode group,
    since waiting would never help.
    """
    live = [g for g in groups if g.model == model and g.routable and ref(g) not in exclude]
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

    # What it needs now must fit on one rank (the emptiest one's count); the most free blocks wins.
    now = prompt_tokens + min(max_tokens, headroom_tokens)
    fits = [g for g in decode if min(decode_free(g), g.max_blocks_per_rank) >= g.blocks_for(now)]
    if not fits:
        raise NoCapacity(
            f"no decode group has {min(g.blocks_for(now) for g in decode)} free KV blocks on a rank "
            f"for this request's {prompt_tokens} prompt tokens; retry shortly",
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
    return Route(best_decode, best_prefill, best_decode.blocks_for(now))


def _queue(g: WorkerGroup, inflight: Inflight) -> int:
    requests, _ = inflight.unseen(g)
    return g.queue_depth + requests


class RegistryCache:
    """The registered groups, refreshed every `refresh_s`; a group stays for `hold_s` after its last
    sighting. `groups()` are the routable ones (live, not suspected), `all_groups()` every state.

    A group's age (time since it was last seen) only grows between successful reads, so while
    Redis is unreachable nothing ages out and routing goes on from the last copy; after a
    restart that lost the data, groups reappear with their next heartbeat well within `hold_s`.
    A group that stopped heartbeating is dropped after `hold_s` of reads that miss it. Listeners
    (`on_change`) are called after every successful read and every `suspect`. `clock` (seconds,
    monotonic) measures ages, suspicions and staleness; tests drive it to age groups by events.
    """

    def __init__(
        self,
        registry: WorkerRegistry,
        refresh_s: float = 0.5,
        hold_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.refresh_s = refresh_s
        self.hold_s = registry.ttl_s if hold_s is None else hold_s
        self._seen: dict[str, tuple[WorkerGroup, float]] = {}  # id -> (latest record, age in s)
        self._last_ok_s: float | None = None
        self.last_error: str | None = None
        self.num_errors = 0
        self._suspect: dict[str, tuple[int, float]] = {}  # id -> (incarnation, until, monotonic)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self.listeners: list[Callable[[], None]] = []

    async def refresh(self) -> bool:
        try:
            groups = await self.registry.groups()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            self.num_errors += 1
            if self.last_error is None:
                log.warning("registry unreachable, routing from the cached copy: %s", exc)
            self.last_error = str(exc)
            return False
        now = self.clock()
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
        self._notify()
        return True

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener()

    def all_groups(self) -> list[WorkerGroup]:
        """Every registration in the cache, whatever its state, by group id."""
        return [g for _, (g, _) in sorted(self._seen.items())]

    def groups(self) -> list[WorkerGroup]:
        """The groups to route to: live, and not suspected since they last registered anew."""
        now = self.clock()
        self._suspect = {gid: s for gid, s in self._suspect.items() if s[1] > now}
        return [
            g for gid, (g, _) in sorted(self._seen.items())
            if g.routable and not (gid in self._suspect and g.incarnation <= self._suspect[gid][0])
        ]

    def suspect(self, group: GroupRef, for_s: float | None = None) -> None:
        """Route around one run of a group that just failed a call: until it registers under a
        newer incarnation (its supervisor restarted it) or `for_s` (default `hold_s`) passes."""
        group_id, incarnation = group
        self._suspect[group_id] = (incarnation, self.clock() + (self.hold_s if for_s is None else for_s))
        self._notify()

    @property
    def staleness_s(self) -> float:
        """Seconds since the last successful read (inf before the first)."""
        return float("inf") if self._last_ok_s is None else self.clock() - self._last_ok_s

    def counts(self) -> dict[Role, int]:
        """Routable groups per role."""
        out = dict.fromkeys(Role, 0)
        for g in self.groups():
            out[g.role] += 1
        return out

    def states(self) -> dict[Role, dict[GroupState, int]]:
        """Registered groups per role and state."""
        out = {role: dict.fromkeys(GroupState, 0) for role in Role}
        for g in self.all_groups():
            out[g.role][g.state] += 1
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
