"""The worker control service over TLS with the shared token (the KV service's TLS is covered in
tests/workers/kv/test_grpc_transport.py::test_tls_with_token; the control service's token in
tests/workers/serving/test_control_service.py). A plaintext client cannot talk to it at all, a
TLS client without the token is UNAUTHENTICATED, and a TLS client with it is answered."""

from __future__ import annotations

from pathlib import Path

import pytest
from moeplane.api.presets import model_preset
from moeplane.workers.grpc_security import GrpcSecurity, new_server
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.client import WorkerControlClient, WorkerControlError
from moeplane.workers.serving.config import Role
from moeplane.workers.serving.controller import GroupController, GroupSpec
from moeplane.workers.serving.engine import EngineConfig
from moeplane.workers.serving.service import WorkerControlService, add_control_service

from tests.workers.kv.tls_certs import self_signed

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SERVER_NAME = "moeplane-control.test"


async def test_control_service_over_tls_needs_the_token(tmp_path: Path) -> None:
    tls = self_signed(tmp_path, SERVER_NAME)
    security = GrpcSecurity(token="shared-secret", tls=tls)
    spec = GroupSpec(
        "tls-0", Role.DECODE, 2, RankSpec(model_preset("tiny"), 0, EngineConfig(Role.DECODE, num_blocks=8))
    )
    server = new_server(security)
    add_control_service(server, WorkerControlService(GroupController(spec)))
    address = f"127.0.0.1:{security.add_port(server, '127.0.0.1:0')}"
    await server.start()
    try:
        cases = [
            (GrpcSecurity(token="shared-secret"), "UNAVAILABLE"),  # plaintext to a TLS port
            (GrpcSecurity(tls=tls), "UNAUTHENTICATED"),  # TLS, no token
            (GrpcSecurity(token="guess", tls=tls), "UNAUTHENTICATED"),
        ]
        for client_security, code in cases:
            client = WorkerControlClient(address, client_security)
            with pytest.raises(WorkerControlError) as info:
                await client.health(timeout_s=30.0)  # refused at once; only a bound on a hang
            assert info.value.code.name == code, (client_security, info.value)
            await client.close()
        client = WorkerControlClient(address, security)
        health = await client.health()
        assert (health.group_id, health.serving) == ("tls-0", False)
        await client.close()
    finally:
        await server.stop(grace=None)
