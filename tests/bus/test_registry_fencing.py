"""The registry's fence against a real redis-server: a registration carries its incarnation, and a
stale writer (a heartbeat that read "live" before its group failed) can neither make a group
routable again after its supervisor marked it restarting, nor re-register it after it was removed.
`groups()` returns every state; `live_groups()` only the routable ones."""

from __future__ import annotations

import time
import uuid

import pytest
from moeplane.api.enums import Role

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import GroupState, RegistryError, WorkerGroup, WorkerRegistry

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def record(incarnation: int, state: GroupState = GroupState.LIVE, gid: str = "decode-0") -> WorkerGroup:
    return WorkerGroup(
        group_id=gid, role=Role.DECODE, address="127.0.0.1:1", model="tiny", ep_size=2, block_size_tokens=16,
        kv_blocks_total=64, kv_blocks_free=64, max_blocks_per_rank=32, queue_depth=0,
        heartbeat_at_s=time.time(), state=state, incarnation=incarnation,
        message="" if state is GroupState.LIVE else "rank 1 died",
    )


@pytest.fixture
async def registry(redis_server):
    client = async_redis(redis_server.url)
    yield WorkerRegistry(client, DeploymentKeys("test", f"fence-{uuid.uuid4().hex[:8]}"), ttl_s=30)
    await client.aclose()


async def test_a_stale_heartbeat_cannot_make_a_failed_group_live_again(registry: WorkerRegistry) -> None:
    assert await registry.publish(record(100))
    assert [g.group_id for g in await registry.live_groups()] == ["decode-0"]
    # The supervisor marks the group restarting under a new incarnation ...
    assert await registry.publish(record(101, GroupState.RESTARTING))
    # ... and a heartbeat that snapshotted it live before the failure writes afterwards: refused.
    assert not await registry.publish(record(100))
    assert await registry.live_groups() == []
    (current,) = await registry.groups()
    assert (current.state, current.incarnation) == (GroupState.RESTARTING, 101)
    assert current.message == "rank 1 died"
    # Restarted: the newer incarnation is accepted, and heartbeats at it go on being accepted.
    assert await registry.publish(record(102))
    assert await registry.publish(record(102))
    assert [g.incarnation for g in await registry.live_groups()] == [102]


async def test_removal_fences_out_writers_of_the_removed_incarnation(registry: WorkerRegistry) -> None:
    assert await registry.publish(record(7))
    assert await registry.remove("decode-0", incarnation=7)
    assert not await registry.publish(record(7))  # a heartbeat in flight at the removal
    assert await registry.groups() == []
    # A removal by a writer that is itself stale removes nothing.
    assert await registry.publish(record(9))
    assert not await registry.remove("decode-0", incarnation=8)
    assert [g.incarnation for g in await registry.groups()] == [9]
    # A new supervisor (a higher incarnation) registers the group again.
    assert await registry.publish(record(10))
    assert [g.incarnation for g in await registry.live_groups()] == [10]


async def test_groups_lists_every_state_live_groups_only_live(registry: WorkerRegistry) -> None:
    for i, state in enumerate(GroupState):
        assert await registry.publish(record(1, state, gid=f"decode-{i}"))
    everyone = await registry.groups()
    assert [g.state for g in everyone] == list(GroupState)
    assert [g.group_id for g in await registry.live_groups()] == [
        f"decode-{list(GroupState).index(GroupState.LIVE)}"
    ]


async def test_fence_outlives_the_ttl(redis_server) -> None:
    client = async_redis(redis_server.url)
    keys = DeploymentKeys("test", "fence-ttl")
    with pytest.raises(RegistryError, match="fence_ttl_s"):
        WorkerRegistry(client, keys, ttl_s=5, fence_ttl_s=5)
    reg = WorkerRegistry(client, keys, ttl_s=5)
    assert reg.fence_ttl_s == 60
    assert await reg.publish(record(3))
    fence_ms = await client.pttl(keys.worker_epoch("decode-0"))
    alive_ms = await client.pttl(keys.worker_alive("decode-0"))
    assert alive_ms <= 5000 < fence_ms <= 60_000
    await reg.remove("decode-0")
    await client.aclose()
