"""How long a request keeps trying after its group fails: until its deadline while each attempt
streams new tokens, and no more than `max_attempts` attempts in a row that stream nothing.

A real frontend over loopback HTTP, a real redis-server registry and a real gRPC WorkerControl
service over loopback: a decode "group" that fails (GROUP_FAILED) after streaming `tokens_per_run`
tokens of each request, then registers anew under the next incarnation, as a group restarted by
its supervisor does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
import pytest_asyncio
from moeplane.api.enums import Role
from moeplane.protos import worker_control_pb2 as pb
from moeplane.protos import worker_control_pb2_grpc as pb_grpc
from moeplane.workers.frontend.app import FrontendConfig
from moeplane.workers.frontend.server import FrontendServer
from moeplane.workers.model.tokenizer import ByteTokenizer
from moeplane.workers.serving.limits import ServingLimits

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import WorkerGroup, WorkerRegistry

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TOKEN = ord("a")  # ByteTokenizer: token id = byte


class FailingGroup(pb_grpc.WorkerControlServicer):
    """Streams `tokens_per_run` tokens of a request, then fails it (GROUP_FAILED) and re-registers
    under the next incarnation: the router may use it again, as it would a restarted group."""

    def __init__(self, registry: WorkerRegistry, tokens_per_run: int) -> None:
        self.registry = registry
        self.tokens_per_run = tokens_per_run
        self.incarnation = 1
        self.address = ""
        self.calls = 0

    def record(self) -> WorkerGroup:
        return WorkerGroup(
            group_id="decode-0", role=Role.DECODE, address=self.address, model="tiny", ep_size=1,
            block_size_tokens=16, kv_blocks_total=1024, kv_blocks_free=1024, max_blocks_per_rank=1024,
            queue_depth=0, heartbeat_at_s=time.time(), incarnation=self.incarnation,
        )  # fmt: skip

    async def Decode(
        self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TokenEvent]:
        self.calls += 1
        done = request.sampling.output_offset
        for i in range(min(self.tokens_per_run, request.sampling.max_tokens)):
            last = i + 1 == request.sampling.max_tokens
            yield pb.TokenEvent(
                request_id=request.request_id, token_ids=[TOKEN], text="a", num_output_tokens=done + i + 1,
                finish_reason=pb.FINISH_REASON_LENGTH if last else pb.FINISH_REASON_UNSPECIFIED,
            )  # fmt: skip
            if last:
                return
        self.incarnation += 1
        await self.registry.publish(self.record())
        yield pb.TokenEvent(
            request_id=request.request_id, finish_reason=pb.FINISH_REASON_ERROR,
            error_kind=pb.ERROR_KIND_GROUP_FAILED, error="rank 0 died",
        )  # fmt: skip

    async def Cancel(
        self, request: pb.CancelRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelResponse:
        return pb.CancelResponse(found=False)


@pytest_asyncio.fixture(loop_scope="module")
async def stack(redis_server, request):
    tokens_per_run = request.param
    keys = DeploymentKeys("test", f"retry-{uuid.uuid4().hex[:8]}")
    redis = async_redis(redis_server.url)
    group = FailingGroup(WorkerRegistry(redis, keys), tokens_per_run)
    server = grpc.aio.server()
    pb_grpc.add_WorkerControlServicer_to_server(group, server)
    group.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    await group.registry.publish(group.record())
    frontend = FrontendServer(
        FrontendConfig(served_model="tiny", max_model_len=512, request_timeout_s=120), redis_server.url,
        keys, ByteTokenizer(), registry_refresh_s=0.05,
        limits=ServingLimits(max_model_len=512, request_timeout_s=120, queue_timeout_s=60),
    )  # fmt: skip
    await frontend.start()
    try:
        async with aiohttp.ClientSession(frontend.url) as session:
            yield group, session
    finally:
        await frontend.stop()
        await server.stop(None)
        await redis.aclose()


async def _complete(session: aiohttp.ClientSession, max_tokens: int) -> tuple[int, dict]:
    body = {"model": "tiny", "prompt": "x", "max_tokens": max_tokens, "temperature": 0}
    async with session.post("/v1/completions", json=body) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("stack", [1], indirect=True)
async def test_a_request_that_makes_progress_is_retried_past_max_attempts(stack) -> None:
    group, session = stack
    status, body = await asyncio.wait_for(_complete(session, max_tokens=10), 120)
    # One token per attempt: ten attempts, nine group failures, more than max_attempts (4) in all.
    assert status == 200, body
    assert body["choices"][0]["text"] == "a" * 10 and body["choices"][0]["finish_reason"] == "length"
    assert group.calls == 10


@pytest.mark.parametrize("stack", [0], indirect=True)
async def test_a_request_that_no_group_advances_gives_up_after_max_attempts(stack) -> None:
    group, session = stack
    status, body = await asyncio.wait_for(_complete(session, max_tokens=10), 120)
    assert status >= 500, body
    message = body["error"]["message"]
    assert "failed 4 times (4 in a row without a new token)" in message and "rank 0 died" in message
    assert group.calls == 4
