"""Async client of a group's worker control service (what the frontend calls).

Errors arrive as `WorkerControlError` with the gRPC status code: INVALID_ARGUMENT (the message
names the field), UNAVAILABLE (the group is not serving, or a KV pull failed: retry elsewhere),
UNAUTHENTICATED, INTERNAL. Closing a `decode()` stream early cancels the request on the group,
which frees its KV blocks.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
from moeplane.protos import kv_transfer_pb2 as kv_pb
from moeplane.protos import worker_control_pb2 as pb
from moeplane.protos import worker_control_pb2_grpc as pb_grpc
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.serving.convert import (
    ERROR_KIND_FROM_PB,
    FINISH_FROM_PB,
    logprobs_from_pb,
    sampling_to_pb,
    stop_reason_from_pb,
)
from moeplane.workers.serving.logprobs import TokenLogprobs
from moeplane.workers.serving.sequence import ErrorKind, FinishReason, SamplingParams


class WorkerControlError(RuntimeError):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PrefillResult:
    request_id: str
    first_token_id: int
    text: str
    finish_reason: FinishReason | None  # set when the request ended at its first token
    kv: kv_pb.KVHandle | None  # pass unchanged to the decode group
    prefill_ms: float  # the whole Prefill call on the worker, its queue time included
    queue_ms: float = 0.0  # worker side: waiting for the group's step loop to take the request
    logprobs: tuple[TokenLogprobs, ...] = ()  # the first token's, when asked for
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None  # prompt tokens 1.., when asked for
    stop_reason: str | int | None = None


@dataclass(frozen=True)
class TokenEvent:
    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None
    error: str
    num_output_tokens: int
    logprobs: tuple[TokenLogprobs, ...] = ()
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None
    stop_reason: str | int | None = None
    error_kind: ErrorKind | None = None  # with FinishReason.ERROR: whether another group can help


class WorkerControlClient:
    def __init__(self, address: str, security: GrpcSecurity | None = None) -> None:
        self.address = address
        self._security = security or GrpcSecurity()
        self._channel = self._security.channel(address)
        self._stub = pb_grpc.WorkerControlStub(self._channel)
        self._metadata = self._security.call_metadata()

    async def close(self) -> None:
        await self._channel.close()

    async def prefill(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: SamplingParams,
        timeout_s: float | None = None,
    ) -> PrefillResult:
        req = pb.PrefillRequest(
            request_id=request_id, prompt_token_ids=prompt_token_ids, sampling=sampling_to_pb(sampling)
        )
        try:
            reply = await self._stub.Prefill(req, timeout=timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise WorkerControlError(exc.code(), exc.details() or "") from None
        return PrefillResult(
            reply.request_id,
            reply.first_token_id,
            reply.text,
            FINISH_FROM_PB[reply.finish_reason],
            reply.kv if reply.HasField("kv") else None,
            reply.prefill_ms,
            reply.queue_ms,
            (logprobs_from_pb(reply.first_logprobs),) if reply.HasField("first_logprobs") else (),
            tuple(map(logprobs_from_pb, reply.prompt_logprobs))
            if sampling.prompt_logprobs is not None else None,
            stop_reason_from_pb(reply.stop_reason),
        )

    async def decode(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: SamplingParams,
        first_token_id: int | None = None,
        kv: kv_pb.KVHandle | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[TokenEvent]:
        req = pb.DecodeRequest(
            request_id=request_id, prompt_token_ids=prompt_token_ids, sampling=sampling_to_pb(sampling), kv=kv
        )
        if first_token_id is not None:
            req.first_token_id = first_token_id
        call = self._stub.Decode(req, timeout=timeout_s, metadata=self._metadata)
        try:
            async for ev in call:
                yield TokenEvent(
                    ev.request_id,
                    tuple(ev.token_ids),
                    ev.text,
                    FINISH_FROM_PB[ev.finish_reason],
                    ev.error,
                    ev.num_output_tokens,
                    tuple(map(logprobs_from_pb, ev.logprobs)),
                    tuple(map(logprobs_from_pb, ev.prompt_logprobs)) if ev.has_prompt_logprobs else None,
                    stop_reason_from_pb(ev.stop_reason),
                    ERROR_KIND_FROM_PB.get(ev.error_kind),
                )
        except grpc.aio.AioRpcError as exc:
            raise WorkerControlError(exc.code(), exc.details() or "") from None
        finally:
            call.cancel()  # no-op when the stream ended; else the group cancels the request

    async def cancel(self, request_id: str) -> bool:
        try:
            reply = await self._stub.Cancel(pb.CancelRequest(request_id=request_id), metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise WorkerControlError(exc.code(), exc.details() or "") from None
        return bool(reply.found)

    async def health(self, timeout_s: float = 5.0) -> pb.HealthResponse:
        try:
            return await self._stub.Health(pb.HealthRequest(), timeout=timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise WorkerControlError(exc.code(), exc.details() or "") from None

    async def stats(self, timeout_s: float = 30.0) -> pb.StatsResponse:
        try:
            return await self._stub.Stats(pb.StatsRequest(), timeout=timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise WorkerControlError(exc.code(), exc.details() or "") from None


@contextlib.asynccontextmanager
async def connect(address: str, security: GrpcSecurity | None = None) -> AsyncIterator[WorkerControlClient]:
    client = WorkerControlClient(address, security)
    try:
        yield client
    finally:
        await client.close()
