"""Shared-token authentication and optional TLS for moeplane's gRPC servers and clients.

Every server (KV transfer, worker control) checks `authorization: Bearer <token>` metadata when a
token is configured, answering UNAUTHENTICATED otherwise, and listens with TLS when a certificate
is given. Clients send the token and verify the server against the CA bundle.
"""

from __future__ import annotations

import hmac
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from moeplane.workers.kv.frames import GRPC_MAX_MESSAGE_BYTES

AUTH_HEADER = "authorization"

# Both sides raise their limits so a 1 MiB chunk plus its header passes; keepalives notice a dead
# peer mid-transfer instead of waiting for the deadline.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
)


@dataclass(frozen=True)
class TLSConfig:
    """PEM files. A server needs cert and key; a client needs the CA (and may override the name)."""

    cert_path: Path | None = None
    key_path: Path | None = None
    ca_path: Path | None = None
    server_name: str | None = None  # override for certificates issued to a service name


@dataclass(frozen=True)
class GrpcSecurity:
    token: str | None = None
    tls: TLSConfig | None = None

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AUTH_HEADER, f"Bearer {self.token}"),) if self.token else ()

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [TokenAuthInterceptor(self.token)] if self.token else []

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Bind `address` (host:port, port 0 = any); returns the bound port."""
        if self.tls is None:
            port = server.add_insecure_port(address)
        else:
            if self.tls.cert_path is None or self.tls.key_path is None:
                raise ValueError("TLS on a server needs tls.cert_path and tls.key_path")
            creds = grpc.ssl_server_credentials(
                [(self.tls.key_path.read_bytes(), self.tls.cert_path.read_bytes())]
            )
            port = server.add_secure_port(address, creds)
        if port == 0:
            raise OSError(f"could not bind gRPC server to {address}")
        return port

    def channel(self, address: str, extra_options: tuple[tuple[str, Any], ...] = ()) -> grpc.aio.Channel:
        options = CHANNEL_OPTIONS + extra_options
        if self.tls is None:
            return grpc.aio.insecure_channel(address, options=options)
        ca = self.tls.ca_path.read_bytes() if self.tls.ca_path else None
        if self.tls.server_name:
            options = (*options, ("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca), options)


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})


def advertised_host(bind_host: str, advertise_host: str | None = None) -> str:
    """The host peers should dial: `advertise_host` if given; for a wildcard bind (a pod listening
    on every interface), this machine's own address (its hostname's, which is the pod IP in
    Kubernetes); otherwise the bind host itself."""
    if advertise_host:
        return advertise_host
    if bind_host not in WILDCARD_HOSTS:
        return bind_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError as exc:
        raise OSError(
            f"bound to {bind_host!r} and cannot resolve this host's own address ({exc}): pass advertise_host"
        ) from None


def new_server(security: GrpcSecurity) -> grpc.aio.Server:
    return grpc.aio.server(interceptors=security.server_interceptors(), options=CHANNEL_OPTIONS)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls whose bearer token differs from the configured one (constant-time compare)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the shared token must not be empty")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())  # type: ignore[attr-defined]
        given = metadata.get(AUTH_HEADER, "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if handler is None or hmac.compare_digest(given_bytes, self._expected):
            return handler
        return _rejecting(handler)


async def _deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


async def _deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
    yield  # pragma: no cover - makes this an async generator like the handler it replaces


def _rejecting(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_deny, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_deny, **kwargs)
    return grpc.stream_stream_rpc_method_handler(_deny_stream, **kwargs)
