"""The router's registry cache keeps routing through a Redis outage and a restart that loses the data."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from moeplane.api.enums import Role
from moeplane.workers.embedded.local_redis import LocalRedis
from moeplane.workers.frontend.router import RegistryCache

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import WorkerGroup, WorkerRegistry

pytestmark = pytest.mark.integration


def _group(gid: str, role: Role, incarnation: int = 0) -> WorkerGroup:
    return WorkerGroup(
        group_id=gid, role=role, address="127.0.0.1:1", model="tiny", ep_size=2, block_size_tokens=16,
        kv_blocks_total=64, kv_blocks_free=64, max_blocks_per_rank=32, queue_depth=0,
        heartbeat_at_s=time.time(), incarnation=incarnation,
    )


class Clock:
    """The cache's clock, moved by the test: ages follow the test's events, not this machine's speed."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


async def test_cache_survives_outage_and_empty_restart() -> None:
    clock = Clock()
    with LocalRedis() as server:
        client = async_redis(server.url)
        # Redis keeps the records for the whole test (its TTL is its own clock); the cache holds a
        # group for 1 s of its clock after the last read that saw it.
        reg = WorkerRegistry(client, DeploymentKeys("test", f"cache-{uuid.uuid4().hex[:6]}"), ttl_s=3600)
        cache = RegistryCache(reg, refresh_s=0.4, hold_s=1.0, clock=clock)  # refreshed by hand below
        assert cache.staleness_s == float("inf")
        await reg.publish(_group("p0", Role.PREFILL))
        await reg.publish(_group("d0", Role.DECODE))
        assert await cache.refresh()
        assert [g.group_id for g in cache.groups()] == ["d0", "p0"]

        # Outage far longer than the hold: nothing can be read, nothing ages out.
        server.stop()
        assert not await cache.refresh()
        clock.advance(5.0)
        assert not await cache.refresh()
        assert cache.last_error and cache.num_errors == 2 and cache.staleness_s == 5.0
        assert [g.group_id for g in cache.groups()] == ["d0", "p0"]

        # Back, but empty (no persistence): the groups are held until their next heartbeat...
        server.start()
        assert await cache.refresh() and cache.last_error is None
        assert [g.group_id for g in cache.groups()] == ["d0", "p0"]
        clock.advance(1.5)  # a stall of this process: one read ages p0 by 2 x refresh_s at most
        await reg.publish(_group("d0", Role.DECODE))  # only d0 heartbeats again
        assert await cache.refresh()
        assert [g.group_id for g in cache.groups()] == ["d0", "p0"]
        clock.advance(0.4)  # a read that misses p0 again ages it past the hold
        assert await cache.refresh()
        assert [g.group_id for g in cache.groups()] == ["d0"]
        assert cache.counts() == {Role.PREFILL: 0, Role.DECODE: 1}
        await client.aclose()


async def test_suspects_are_routed_around_until_they_register_anew_or_time_runs_out(
    redis_server: LocalRedis,
) -> None:
    client = async_redis(redis_server.url)
    reg = WorkerRegistry(client, DeploymentKeys("test", f"cache-{uuid.uuid4().hex[:6]}"), ttl_s=3600)
    await reg.publish(_group("d0", Role.DECODE))
    await reg.publish(_group("d1", Role.DECODE))
    cache = RegistryCache(reg, refresh_s=0.05)
    cache.start()
    await cache.wait_for([Role.DECODE], timeout_s=60)
    # A run that just failed a call is routed around ...
    cache.suspect(("d0", 0), for_s=0.3)
    assert [g.group_id for g in cache.groups()] == ["d1"]
    # ... until its time runs out (waited for, however slow this machine is) ...
    deadline = time.monotonic() + 30
    while [g.group_id for g in cache.groups()] != ["d0", "d1"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    # ... or, at once, when its supervisor registers it anew (restarted: a newer incarnation).
    cache.suspect(("d0", 0), for_s=3600)
    assert [g.group_id for g in cache.groups()] == ["d1"]
    await reg.publish(_group("d0", Role.DECODE, incarnation=1))
    assert await cache.refresh()
    assert [g.group_id for g in cache.groups()] == ["d0", "d1"]
    with pytest.raises(TimeoutError, match="no live prefill groups"):
        await cache.wait_for([Role.PREFILL], timeout_s=0.2)
    await cache.stop()
    await client.aclose()
