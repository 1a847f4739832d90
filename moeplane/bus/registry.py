"""The worker-group registry in Redis: who serves, where, and how much room each group has.

Layout (keys from `DeploymentKeys`):
- `workers`: a hash of group id -> the group's latest registration as JSON (`WorkerGroup`);
- `alive:{group_id}`: a heartbeat key with a TTL. A record is current while its key exists, so a
  group whose supervisor dies drops out within one TTL, with nobody having to clean up after it;
- `epoch:{group_id}`: the group's fence, the lowest `incarnation` still accepted.

A group's supervisor calls `publish` every heartbeat and at once on every change of state (live,
draining, restarting, failed); each call stores the record and refreshes its TTL atomically (one
Lua script), so readers never see a live key without a record. A current record is routable only
when its state is `live`: `groups()` returns every current record (health, status), `live_groups()`
the routable ones.

Fencing: every registration carries the group's `incarnation`, a number its supervisor raises on
each change of state (microseconds of wall clock, kept strictly increasing, so a restarted
supervisor also starts above its predecessor). The script refuses a record whose incarnation is
below the group's epoch and raises the epoch to the one it stores, atomically; `remove` fences one
past the last incarnation. A heartbeat that read "live" before its group failed, and writes after
the supervisor marked it restarting, is therefore refused instead of making the group routable
again. Epochs expire `fence_ttl_s` after their last write (a Redis that restarts empty loses them
too): by then no stale writer is left.
"""

from __future__ import annotations

from enum import StrEnum

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moeplane.api.enums import Role
from moeplane.bus.keys import DeploymentKeys

DEFAULT_TTL_S = 5.0

# KEYS: workers hash, alive key, epoch key. ARGV: group id, record, alive value, ttl ms, incarnation,
# fence ttl ms. Stores the record unless a newer incarnation was registered (returns 0 then).
_PUBLISH_FENCED = """
local epoch = tonumber(redis.call('GET', KEYS[3]) or '-1')
if tonumber(ARGV[5]) < epoch then
  return 0
end
redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[6])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 1
"""

# KEYS as above. ARGV: group id, incarnation, fence ttl ms. Deregisters and fences the group one past
# `incarnation`, unless a newer incarnation registered meanwhile (returns 0 then).
_REMOVE_FENCED = """
local epoch = tonumber(redis.call('GET', KEYS[3]) or '-1')
local incarnation = tonumber(ARGV[2])
if incarnation < epoch then
  return 0
end
redis.call('SET', KEYS[3], string.format('%d', incarnation + 1), 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

# Removes a group's record only if its heartbeat key is gone, atomically, so a group that
# re-registers between our read and our delete is never dropped.
_PRUNE_IF_DEAD = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class GroupState(StrEnum):
    """Where a group is in its life, as its supervisor reports it. Only LIVE groups are routed to."""

    STARTING = "starting"  # ranks starting or loading weights
    LIVE = "live"  # serving: registered and answering its health probe after loading its weights
    DRAINING = "draining"  # taking no new requests; the ones it holds finish or migrate
    RESTARTING = "restarting"  # a rank died or hung; the supervisor restarts the group as a unit
    FAILED = "failed"  # given up after repeated failures; `message` says why


class WorkerGroup(BaseModel):
    """One EP group's registration: identity, where its control service listens, and its load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_id: str = Field(min_length=1)
    role: Role
    address: str = Field(min_length=1, description="host:port of the group's WorkerControl gRPC service.")
    model: str = Field(min_length=1, description="Served model name.")
    ep_size: int = Field(gt=0, description="Ranks in the EP group.")
    block_size_tokens: int = Field(gt=0, description="Tokens per KV block.")
    kv_blocks_total: int = Field(ge=0, description="KV blocks over all ranks of the group.")
    kv_blocks_free: int = Field(ge=0, description="Free KV blocks over all ranks.")
    max_blocks_per_rank: int = Field(
        ge=0, description="Free blocks on the emptiest rank: a request lives on one DP rank."
    )
    queue_depth: int = Field(ge=0, description="Requests waiting or running over all ranks.")
    num_running: int = Field(0, ge=0, description="Requests in the ranks' running batches.")
    num_waiting: int = Field(
        0, ge=0, description="Requests queued on the ranks (new, preempted, or pulling their KV)."
    )
    num_preemptions: int = Field(
        0, ge=0, description="Sequences preempted (recomputed later) since the group last started."
    )
    heartbeat_at_s: float = Field(ge=0, description="Unix time the numbers were read.")
    state: GroupState = Field(
        GroupState.LIVE, description="The group's state; only live groups are routed to."
    )
    pool: str = Field("", description="The pool (MoEPool name, or the role in embedded mode) running it.")
    revision: str = Field("", description="The pool revision the group was started from (rollouts).")
    restarts: int = Field(0, ge=0, description="Times its supervisor restarted it.")
    message: str = Field("", description="Why it is not live (restarting, failed), for status and /health.")
    incarnation: int = Field(
        0, ge=0, description="Raised by the supervisor on each change of state; lower ones are refused."
    )

    @property
    def routable(self) -> bool:
        return self.state is GroupState.LIVE

    def blocks_for(self, num_tokens: int) -> int:
        """KV blocks `num_tokens` tokens take in this group."""
        return -(-num_tokens // self.block_size_tokens)


class RegistryError(RuntimeError):
    """A registration that cannot be stored (e.g. a non-positive TTL)."""


class WorkerRegistry:
    """Reads and writes the registry of one deployment. Redis errors propagate to the caller."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: DeploymentKeys,
        ttl_s: float = DEFAULT_TTL_S,
        fence_ttl_s: float | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise RegistryError(f"registry ttl_s must be > 0, got {ttl_s}")
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        # Long enough to outlive any writer that raced a state change; None: 10 TTLs, at least 60 s.
        self.fence_ttl_s = max(60.0, 10 * ttl_s) if fence_ttl_s is None else fence_ttl_s
        if self.fence_ttl_s <= ttl_s:
            raise RegistryError(f"fence_ttl_s ({self.fence_ttl_s}) must exceed ttl_s ({ttl_s})")
        self._prune = client.register_script(_PRUNE_IF_DEAD)
        self._publish = client.register_script(_PUBLISH_FENCED)
        self._remove = client.register_script(_REMOVE_FENCED)

    def _group_keys(self, group_id: str) -> list[str]:
        k = self.keys
        return [k.workers(), k.worker_alive(group_id), k.worker_epoch(group_id)]

    async def publish(self, group: WorkerGroup) -> bool:
        """Register or heartbeat: store the record and refresh the TTL together. False (nothing
        written) when a newer incarnation of the group is registered: the caller is stale."""
        ttl_ms = max(1, int(self.ttl_s * 1000))
        fence_ms = max(1, int(self.fence_ttl_s * 1000))
        stored = await self._publish(
            keys=self._group_keys(group.group_id),
            args=[group.group_id, group.model_dump_json(), f"{group.heartbeat_at_s:.3f}", ttl_ms,
                  group.incarnation, fence_ms],
        )
        return bool(stored)

    async def remove(self, group_id: str, incarnation: int | None = None) -> bool:
        """Deregister at once (a clean shutdown), rather than waiting for the TTL.

        With `incarnation` (the last one its supervisor registered) the group is also fenced past
        it, so a heartbeat still in flight cannot register it again; False when a newer incarnation
        is registered (then nothing is removed)."""
        if incarnation is not None:
            fence_ms = max(1, int(self.fence_ttl_s * 1000))
            removed = await self._remove(
                keys=self._group_keys(group_id), args=[group_id, incarnation, fence_ms]
            )
            return bool(removed)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.worker_alive(group_id))
            pipe.hdel(self.keys.workers(), group_id)
            await pipe.execute()
        return True

    async def _records(self) -> tuple[list[WorkerGroup], list[str]]:
        raw = await self.client.hgetall(self.keys.workers())
        groups, broken = [], []
        for gid, blob in raw.items():
            gid = gid.decode() if isinstance(gid, bytes) else str(gid)
            try:
                groups.append(WorkerGroup.model_validate_json(blob))
            except ValidationError:
                broken.append(gid)  # Written by an incompatible version; never routed to.
        return groups, broken

    async def groups(self) -> list[WorkerGroup]:
        """Every current registration (its heartbeat key exists), in any state, by group id."""
        groups, _ = await self._records()
        if not groups:
            return []
        alive = await self.client.mget([self.keys.worker_alive(g.group_id) for g in groups])
        return sorted((g for g, a in zip(groups, alive, strict=True) if a is not None),
                      key=lambda g: g.group_id)

    async def live_groups(self) -> list[WorkerGroup]:
        """The current registrations that may be routed to (state live), by group id."""
        return [g for g in await self.groups() if g.routable]

    async def prune_dead(self) -> list[str]:
        """Drop the records of groups whose heartbeat expired; returns their ids."""
        groups, broken = await self._records()
        pruned = []
        for gid in [g.group_id for g in groups] + broken:
            removed = await self._prune(keys=[self.keys.workers(), self.keys.worker_alive(gid)], args=[gid])
            if removed:
                pruned.append(gid)
        return pruned
