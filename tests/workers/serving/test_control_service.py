"""The worker control service's edges over real gRPC, without starting a group: the shared token is
enforced, a group that is not serving answers UNAVAILABLE (the frontend retries elsewhere), and
request bytes that do not parse answer INVALID_ARGUMENT naming the message type."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from moeplane.api.presets import model_preset
from moeplane.protos import worker_control_pb2 as pb
from moeplane.workers.grpc_security import GrpcSecurity, new_server
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.client import WorkerControlClient, WorkerControlError
from moeplane.workers.serving.config import Role
from moeplane.workers.serving.controller import GroupController, GroupSpec
from moeplane.workers.serving.engine import EngineConfig
from moeplane.workers.serving.sequence import SamplingParams
from moeplane.workers.serving.service import CONTROL_SERVICE, WorkerControlService, add_control_service

pytestmark = pytest.mark.integration


@pytest.fixture
async def server():
    security = GrpcSecurity(token="letmein")
    spec = GroupSpec(
        "p9",
        Role.PREFILL,
        2,
        RankSpec(model_preset("tiny"), 0, EngineConfig(Role.PREFILL, num_blocks=8)),
    )
    grpc_server = new_server(security)
    add_control_service(grpc_server, WorkerControlService(GroupController(spec)))
    port = security.add_port(grpc_server, "127.0.0.1:0")
    await grpc_server.start()
    yield f"127.0.0.1:{port}", security
    await grpc_server.stop(grace=None)


async def test_token_is_required(server) -> None:
    address, security = server
    for client in (WorkerControlClient(address), WorkerControlClient(address, GrpcSecurity(token="no"))):
        with pytest.raises(WorkerControlError) as info:
            await client.health()
        assert info.value.code.name == "UNAUTHENTICATED"
        await client.close()
    client = WorkerControlClient(address, security)
    health = await client.health()
    assert (health.group_id, health.num_ranks, health.serving) == ("p9", 2, False)
    assert health.message == "not started"
    await client.close()


async def test_a_group_that_is_not_serving_is_unavailable(server) -> None:
    address, security = server
    client = WorkerControlClient(address, security)
    with pytest.raises(WorkerControlError) as info:
        await client.prefill("r1", [1, 2, 3], SamplingParams(max_tokens=2))
    assert info.value.code.name == "UNAVAILABLE" and "not serving" in info.value.message
    with pytest.raises(WorkerControlError) as info:
        await client.prefill("r2", [1], SamplingParams(max_tokens=2))
    assert info.value.code.name == "UNAVAILABLE"
    assert await client.cancel("r1") is False
    await client.close()


# A field-1 tag with wire type 7 (invalid), and a length-delimited field that runs past the end.
GARBAGE = (b"\x0f\xff\xff", b"\x0a\x7f" + b"x" * 3)


@pytest.mark.parametrize("method", [m.name for m in CONTROL_SERVICE.methods])
@pytest.mark.parametrize("raw", GARBAGE, ids=["bad-wire-type", "truncated"])
async def test_garbage_request_bytes_are_invalid_argument(server, method: str, raw: bytes) -> None:
    address, security = server
    request_type = CONTROL_SERVICE.methods_by_name[method].input_type.full_name
    async with security.channel(address) as channel:
        path = f"/{CONTROL_SERVICE.full_name}/{method}"
        metadata = security.call_metadata()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            if CONTROL_SERVICE.methods_by_name[method].server_streaming:
                stream = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
                async for _ in stream(raw, timeout=30, metadata=metadata):
                    pass
            else:
                unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
                await unary(raw, timeout=30, metadata=metadata)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value
        assert f"{request_type} does not parse ({len(raw)} bytes)" in (info.value.details() or "")


async def test_well_formed_bytes_still_reach_the_servicer(server) -> None:
    address, security = server
    async with security.channel(address) as channel:
        health = channel.unary_unary(
            f"/{CONTROL_SERVICE.full_name}/Health",
            request_serializer=None,
            response_deserializer=pb.HealthResponse.FromString,
        )
        reply = await health(pb.HealthRequest().SerializeToString(), metadata=security.call_metadata())
    assert (reply.group_id, reply.num_ranks) == ("p9", 2)
