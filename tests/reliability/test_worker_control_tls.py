"""The worker control service over TLS with the shared token (the KV service's TLS is covered in
tests/workers/kv/test_grpc_transport.py::test_tls_with_token; the control service's token in
tests/workers/serving/test_control_service.py). A plaintext client cannot talk to it at all, a
TLS client without the token is UNAUTHENTICATED, and a TLS client with it is answered."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from moeplane.api.presets import model_preset
from moeplane.workers.kv.security import GrpcSecurity, TLSConfig, new_server
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.client import WorkerControlClient, WorkerControlError
from moeplane.workers.serving.config import Role
from moeplane.workers.serving.controller import GroupController, GroupSpec
from moeplane.workers.serving.engine import EngineConfig
from moeplane.workers.serving.service import WorkerControlService, add_control_service

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SERVER_NAME = "moeplane-control.test"


def self_signed(tmp: Path) -> TLSConfig:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return TLSConfig(tmp / "cert.pem", tmp / "key.pem", tmp / "cert.pem", SERVER_NAME)


async def test_control_service_over_tls_needs_the_token(tmp_path: Path) -> None:
    tls = self_signed(tmp_path)
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
                await client.health(timeout_s=3.0)
            assert info.value.code.name == code, (client_security, info.value)
            await client.close()
        client = WorkerControlClient(address, security)
        health = await client.health()
        assert (health.group_id, health.serving) == ("tls-0", False)
        await client.close()
    finally:
        await server.stop(grace=None)
