"""What the frontend needs from a serving group, as a Protocol, and the pool of gRPC clients.

`GroupClient` is the serving side's worker-control client seen from here: prefill (first token
and a KV handle), decode (a stream of token events; closing it early cancels the request on the
group and frees its KV), cancel and stats. `moeplane.workers.serving.client.WorkerControlClient`,
the gRPC client of a group's control service, implements it; `ClientPool` keeps one per address.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import grpc
from moeplane.protos import kv_transfer_pb2 as kv_pb
from moeplane.protos import worker_control_pb2 as pb
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.serving.client import PrefillResult, TokenEvent, WorkerControlClient, WorkerControlError
from moeplane.workers.serving.sequence import SamplingParams

# The group is gone or not serving: the request may go to another group.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


class GroupClient(Protocol):
    address: str

    async def prefill(
        self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams,
        timeout_s: float | None = None,
    ) -> PrefillResult: ...

    def decode(
        self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams,
        first_token_id: int | None = None, kv: kv_pb.KVHandle | None = None, timeout_s: float | None = None,
    ) -> AsyncIterator[TokenEvent]: ...

    async def cancel(self, request_id: str) -> bool: ...

    async def stats(self, timeout_s: float = 30.0) -> pb.StatsResponse: ...

    async def close(self) -> None: ...


def is_retryable(exc: BaseException) -> bool:
    """A failure of the group rather than of the request: worth trying another group."""
    return isinstance(exc, WorkerControlError) and exc.code in RETRYABLE_CODES


class ClientPool:
    """One long-lived client (one HTTP/2 channel) per group address."""

    def __init__(
        self,
        security: GrpcSecurity | None = None,
        factory: Callable[[str, GrpcSecurity], GroupClient] = WorkerControlClient,
    ) -> None:
        self.security = security or GrpcSecurity()
        self._factory = factory
        self._clients: dict[str, GroupClient] = {}

    def get(self, address: str) -> GroupClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self._factory(address, self.security)
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
