"""The worker registry and the request-metrics stream against a real redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from moeplane.api.enums import Role
from moeplane.workers.embedded.local_redis import LocalRedis
from moeplane.workers.registry.heartbeat import Heartbeat

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import RegistryError, WorkerGroup, WorkerRegistry
from moeplane.bus.request_metrics import (
    RequestMetricsWriter,
    RequestRecord,
    RequestStatus,
    read_request_records,
)
from tests.waits import until

WAIT_S = 30.0  # bound on waiting for Redis to expire a key (its clock, not ours)

pytestmark = pytest.mark.integration


def _keys() -> DeploymentKeys:
    return DeploymentKeys("test", f"reg-{uuid.uuid4().hex[:8]}")


def _group(gid: str = "decode-0", role: Role = Role.DECODE, free: int = 100) -> WorkerGroup:
    return WorkerGroup(
        group_id=gid, role=role, address="127.0.0.1:1", model="tiny", ep_size=2, block_size_tokens=16,
        kv_blocks_total=128, kv_blocks_free=free, max_blocks_per_rank=free // 2, queue_depth=0,
        heartbeat_at_s=time.time(),
    )


def _record(i: int) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{i}", model="tiny", status=RequestStatus.OK, finish_reason="length", isl_tokens=10 + i,
        osl_tokens=5, queue_ms=1.0, ttft_ms=20.0 + i, itl_ms=3.0, itl_max_ms=4.0, e2e_ms=40.0,
        arrived_at_s=time.time(), prefill_group="p0", decode_group="d0",
    )


async def test_publish_expire_prune_and_remove(redis_server: LocalRedis) -> None:
    client = async_redis(redis_server.url)
    keys = _keys()
    reg = WorkerRegistry(client, keys, ttl_s=30)
    short = WorkerRegistry(client, keys, ttl_s=0.3)  # the same registry, with a TTL that lapses here
    await reg.publish(_group("decode-0"))
    await reg.publish(_group("prefill-0", Role.PREFILL))
    live = await reg.live_groups()
    assert [g.group_id for g in live] == ["decode-0", "prefill-0"]
    assert live[0] == _group("decode-0").model_copy(update={"heartbeat_at_s": live[0].heartbeat_at_s})

    # Both heartbeat with the short TTL, then stop: both lapse; decode-0 heartbeats again.
    await short.publish(_group("decode-0"))
    await short.publish(_group("prefill-0", Role.PREFILL))

    async def none_live() -> bool:
        return await reg.live_groups() == []

    await until(none_live, "both TTLs to lapse", WAIT_S)
    await reg.publish(_group("decode-0", free=7))
    assert [(g.group_id, g.kv_blocks_free) for g in await reg.live_groups()] == [("decode-0", 7)]
    assert await reg.prune_dead() == ["prefill-0"]
    assert await client.hkeys(reg.keys.workers()) == [b"decode-0"]

    await reg.remove("decode-0")
    assert await reg.live_groups() == []
    assert await client.exists(reg.keys.worker_alive("decode-0"), reg.keys.workers()) == 0
    await client.aclose()


async def test_unparseable_record_is_never_live_and_gets_pruned(redis_server: LocalRedis) -> None:
    client = async_redis(redis_server.url)
    reg = WorkerRegistry(client, _keys(), ttl_s=5)
    await client.hset(reg.keys.workers(), "alien", b'{"group_id": "alien", "role": "gpu"}')
    await client.set(reg.keys.worker_alive("alien"), "1")
    await reg.publish(_group("decode-0"))
    assert [g.group_id for g in await reg.live_groups()] == ["decode-0"]
    await client.delete(reg.keys.worker_alive("alien"))
    assert await reg.prune_dead() == ["alien"]
    await client.aclose()


async def test_heartbeat_keeps_alive_lapses_when_group_stops_answering(redis_server: LocalRedis) -> None:
    client = async_redis(redis_server.url)
    reg = WorkerRegistry(client, _keys(), ttl_s=0.4)
    with pytest.raises(RegistryError, match="interval_s must be in"):
        Heartbeat(reg, lambda: asyncio.sleep(0, _group()), interval_s=0.4)
    answering = True

    async def snapshot() -> WorkerGroup:
        if not answering:
            raise ConnectionError("group gone")
        return _group()

    async def live() -> bool:
        return [g.group_id for g in await reg.live_groups()] == ["decode-0"]

    async def lapsed() -> bool:
        return await reg.live_groups() == []

    beat = Heartbeat(reg, snapshot, interval_s=0.1)
    beat.start()
    # Alive only as long as it keeps beating: several beats longer than the TTL ...
    published = beat.num_published
    await until(lambda: asyncio.sleep(0, beat.num_published >= published + 6), "six more beats", WAIT_S)
    await until(live, "a live registration", WAIT_S)
    # ... and gone within a TTL of its group no longer answering ...
    answering = False
    await until(lapsed, "the registration to lapse", WAIT_S)
    assert beat.num_failed >= 1
    # ... and back with its next answer.
    answering = True
    await until(live, "the registration to come back", WAIT_S)
    await beat.stop(deregister=True)
    assert await client.hlen(reg.keys.workers()) == 0
    await client.aclose()


async def test_metrics_stream_roundtrip_and_maxlen(redis_server: LocalRedis) -> None:
    client = async_redis(redis_server.url)
    keys = _keys()
    writer = RequestMetricsWriter(client, keys, maxlen=100)
    for i in range(1000):
        writer.record(_record(i))
    assert await writer.flush() == 1000
    length = await client.xlen(keys.request_metrics())
    # MAXLEN ~ trims whole macro nodes (100 entries by default), so it may keep a little more.
    assert 100 <= length <= 300, length

    first, cursor = await read_request_records(client, keys, count=10)
    assert len(first) == 10
    assert first[0].request_id == f"r{1000 - length}"
    rest, cursor2 = await read_request_records(client, keys, after_id=cursor, count=100_000)
    assert len(rest) == length - 10 and rest[-1] == _record(999).model_copy(
        update={"arrived_at_s": rest[-1].arrived_at_s}
    )
    assert (await read_request_records(client, keys, after_id=cursor2))[0] == []
    await client.aclose()


async def test_concurrent_flushes_write_each_record_once(redis_server: LocalRedis) -> None:
    client = async_redis(redis_server.url)
    keys = _keys()
    writer = RequestMetricsWriter(client, keys)
    for i in range(50):
        writer.record(_record(i))
    counts = await asyncio.gather(writer.flush(), writer.flush(), writer.flush())
    assert sorted(counts) == [0, 0, 50]
    assert await client.xlen(keys.request_metrics()) == 50
    await client.aclose()


async def test_metrics_survive_a_redis_outage_bounded() -> None:
    keys = _keys()
    with LocalRedis() as server:
        client = async_redis(server.url, timeout_s=0.5)
        writer = RequestMetricsWriter(client, keys, max_buffered=5)
        writer.record(_record(0))
        assert await writer.flush() == 1
        server.stop()
        for i in range(1, 8):
            writer.record(_record(i))
        assert await writer.flush() == 0
        assert writer.num_pending == 5 and writer.num_dropped == 2
        server.start()
        assert await writer.flush() == 5
        records, _ = await read_request_records(client, keys)
        # Redis restarted empty (no persistence); the oldest two queued records were dropped.
        assert [r.request_id for r in records] == ["r3", "r4", "r5", "r6", "r7"]
        await client.aclose()


async def test_writer_background_loop_flushes(redis_server: LocalRedis) -> None:
    client = async_redis(redis_server.url)
    keys = _keys()
    writer = RequestMetricsWriter(client, keys, flush_interval_s=0.05)
    writer.start()
    writer.record(_record(1))
    for _ in range(40):
        if await client.xlen(keys.request_metrics()) == 1:
            break
        await asyncio.sleep(0.05)
    assert await client.xlen(keys.request_metrics()) == 1
    writer.record(_record(2))
    await writer.stop()  # the last flush happens on stop
    assert await client.xlen(keys.request_metrics()) == 2
    await client.aclose()
