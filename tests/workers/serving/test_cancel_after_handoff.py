"""A prefill group over real gRPC and a Ray rank: a Cancel RPC that arrives after the prefill has
handed its KV over (the decode side will never pull it) releases the lease and frees the blocks at
once, not at the lease's expiry; and each Prefill reply carries the worker-side queue time.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio
from moeplane.api.presets import model_preset
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.kv.errors import TransferNotFound
from moeplane.workers.kv.frames import MIN_CHUNK_BYTES
from moeplane.workers.kv.grpc_client import GrpcKVClient
from moeplane.workers.kv.layout import TransferHandle
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.client import WorkerControlClient
from moeplane.workers.serving.config import Role, SchedulerConfig
from moeplane.workers.serving.controller import GroupController, GroupSpec
from moeplane.workers.serving.engine import EngineConfig
from moeplane.workers.serving.sequence import SamplingParams
from moeplane.workers.serving.service import ControlServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

LEASE_S = 120.0  # far longer than the test: only the Cancel can free the blocks in time
SCHED = SchedulerConfig(max_num_batched_tokens=32, max_num_seqs=8, max_model_len=256)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def prefill(ray_local):
    engine = EngineConfig(role=Role.PREFILL, num_blocks=64, block_size=8, scheduler=SCHED, lease_s=LEASE_S)
    rank = RankSpec(arch=model_preset("tiny"), weights=3, engine=engine, kv_chunk_bytes=MIN_CHUNK_BYTES)
    server = ControlServer(GroupController(GroupSpec("p-cancel", Role.PREFILL, 1, rank, 0.25)))
    client = WorkerControlClient(await server.start())
    yield server, client
    await client.close()
    await server.stop()


async def blocks(server: ControlServer) -> tuple[int, int]:
    stats = await server.controller.stats()
    return stats.num_used_blocks, sum(r.num_leased_blocks for r in stats.ranks)


async def test_cancel_after_handoff_releases_the_lease(prefill) -> None:
    server, client = prefill
    first = await client.prefill("h1", list(range(40)), SamplingParams(temperature=0.0, max_tokens=8))
    assert first.finish_reason is None and first.kv is not None
    used, leased = await blocks(server)
    assert used == leased == 5  # 40 tokens in blocks of 8, held for the decode side

    assert await client.cancel("h1") is True
    deadline = time.monotonic() + 30.0  # a generous bound: the release is an event
    while await blocks(server) != (0, 0):
        assert time.monotonic() < deadline, f"blocks still held after Cancel: {await blocks(server)}"
        await asyncio.sleep(0.05)

    # The KV is gone for good: a late pull finds no transfer, and a second Cancel finds nothing.
    kv_client = GrpcKVClient(GrpcSecurity(), MIN_CHUNK_BYTES)
    with pytest.raises(TransferNotFound):
        await kv_client.describe(TransferHandle.from_proto(first.kv))
    await kv_client.close()
    assert await client.cancel("h1") is False
    assert await client.cancel("never-seen") is False
    await server.controller.check_invariants()


async def test_prefill_reports_its_queue_time(prefill) -> None:
    server, client = prefill
    sampling = SamplingParams(temperature=0.0, max_tokens=1)  # finishes at its first token
    # A long prompt keeps the step loop busy (chunks of 32 tokens); the short one queues behind it.
    long_task = asyncio.ensure_future(client.prefill("q-long", list(range(200)), sampling))
    # Until the long one holds blocks (it is in the step loop): an event, not a guessed 20 ms.
    deadline = time.monotonic() + 30.0
    while not long_task.done() and (await blocks(server))[0] == 0:
        assert time.monotonic() < deadline, "the long prefill never reached the step loop"
        await asyncio.sleep(0.005)
    short = await client.prefill("q-short", [7, 8, 9], sampling)
    long = await long_task
    for reply in (long, short):
        assert reply.finish_reason is not None and reply.kv is None
        assert 0.0 < reply.queue_ms <= reply.prefill_ms, (reply.queue_ms, reply.prefill_ms)
    assert await blocks(server) == (0, 0)
