"""The worker-group registry in Redis: who serves, where, and how much room each group has.

Layout (keys from `DeploymentKeys`):
- `workers`: a hash of group id -> the group's latest registration as JSON (`WorkerGroup`);
- `alive:{group_id}`: a heartbeat key with a TTL. A group is live while its key exists, so a
  group that dies silently drops out within one TTL, with nobody having to clean up after it.

A group (or a registrar on its behalf) calls `publish` every heartbeat; each call refreshes both
its numbers and its TTL in one MULTI/EXEC, so readers never see a live key without a record.
"""

from __future__ import annotations

from enum import StrEnum

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moeplane.api.enums import Role
from moeplane.bus.keys import DeploymentKeys

DEFAULT_TTL_S = 5.0

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
    heartbeat_at_s: float = Field(ge=0, description="Unix time the numbers were read.")
    state: GroupState = Field(
        GroupState.LIVE, description="The group's state; only live groups are routed to."
    )
    pool: str = Field("", description="The pool (MoEPool name, or the role in embedded mode) running it.")
    revision: str = Field("", description="The pool revision the group was started from (rollouts).")
    restarts: int = Field(0, ge=0, description="Times its supervisor restarted it.")
    message: str = Field("", description="Why it is not live (restarting, failed), for status and /health.")

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

    def __init__(self, client: aioredis.Redis, keys: DeploymentKeys, ttl_s: float = DEFAULT_TTL_S) -> None:
        if ttl_s <= 0:
            raise RegistryError(f"registry ttl_s must be > 0, got {ttl_s}")
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self._prune = client.register_script(_PRUNE_IF_DEAD)

    async def publish(self, group: WorkerGroup) -> None:
        """Register or heartbeat: store the record and refresh the TTL together."""
        ttl_ms = max(1, int(self.ttl_s * 1000))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.workers(), group.group_id, group.model_dump_json())
            pipe.set(self.keys.worker_alive(group.group_id), f"{group.heartbeat_at_s:.3f}", px=ttl_ms)
            await pipe.execute()

    async def remove(self, group_id: str) -> None:
        """Deregister at once (a clean shutdown), rather than waiting for the TTL."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.worker_alive(group_id))
            pipe.hdel(self.keys.workers(), group_id)
            await pipe.execute()

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

    async def live_groups(self) -> list[WorkerGroup]:
        """Registered groups whose heartbeat key still exists, sorted by group id."""
        groups, _ = await self._records()
        if not groups:
            return []
        alive = await self.client.mget([self.keys.worker_alive(g.group_id) for g in groups])
        return sorted((g for g, a in zip(groups, alive, strict=True) if a is not None),
                      key=lambda g: g.group_id)

    async def prune_dead(self) -> list[str]:
        """Drop the records of groups whose heartbeat expired; returns their ids."""
        groups, broken = await self._records()
        pruned = []
        for gid in [g.group_id for g in groups] + broken:
            removed = await self._prune(keys=[self.keys.workers(), self.keys.worker_alive(gid)], args=[gid])
            if removed:
                pruned.append(gid)
        return pruned
