"""The worker control service's edges over real gRPC, without starting a group: the shared token is
enforced, and a group that is not serving answers UNAVAILABLE (the frontend retries elsewhere)."""

from __future__ import annotations

import pytest
from moeplane.api.presets import model_preset
from moeplane.protos import worker_control_pb2_grpc as pb_grpc
from moeplane.workers.kv.security import GrpcSecurity, new_server
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.client import WorkerControlClient, WorkerControlError
from moeplane.workers.serving.config import Role
from moeplane.workers.serving.controller import GroupController, GroupSpec
from moeplane.workers.serving.engine import EngineConfig
from moeplane.workers.serving.sequence import SamplingParams
from moeplane.workers.serving.service import WorkerControlService

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
    pb_grpc.add_WorkerControlServicer_to_server(WorkerControlService(GroupController(spec)), grpc_server)
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
