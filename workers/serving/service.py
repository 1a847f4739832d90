"""The worker control gRPC service of one group: a thin adapter over `GroupController`.

Errors are translated here: request bytes that do not parse -> INVALID_ARGUMENT naming the message
type, a bad request -> INVALID_ARGUMENT naming the field, a group that is not
serving -> UNAVAILABLE, an engine-side failure of one request -> its final TokenEvent carries
FINISH_REASON_ERROR and the message. Auth (shared token) and TLS come from `GrpcSecurity`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
from moeplane.protos import worker_control_pb2 as pb
from moeplane.protos import worker_control_pb2_grpc as pb_grpc
from moeplane.workers.grpc_security import GrpcSecurity, new_server
from moeplane.workers.kv.errors import KVTransferError
from moeplane.workers.kv.layout import TransferHandle
from moeplane.workers.kv.rpc_parse import parsing_generic_handler
from moeplane.workers.serving.controller import GroupController, GroupUnavailable
from moeplane.workers.serving.convert import (
    ERROR_KIND_TO_PB,
    FINISH_TO_PB,
    ROLE_TO_PB,
    logprobs_to_pb,
    sampling_from_pb,
    stop_reason_to_pb,
)
from moeplane.workers.serving.engine import TokenOutput
from moeplane.workers.serving.sequence import EngineRequestError, ErrorKind

CONTROL_SERVICE = pb.DESCRIPTOR.services_by_name["WorkerControl"]


def token_event(out: TokenOutput) -> pb.TokenEvent:
    return pb.TokenEvent(
        request_id=out.request_id,
        token_ids=list(out.token_ids),
        text=out.text,
        finish_reason=FINISH_TO_PB[out.finish_reason],  # type: ignore[arg-type]
        error=out.error,
        num_output_tokens=out.num_output_tokens,
        logprobs=[logprobs_to_pb(lp) for lp in out.logprobs],
        prompt_logprobs=[logprobs_to_pb(lp) for lp in out.prompt_logprobs or ()],
        has_prompt_logprobs=out.prompt_logprobs is not None,
        stop_reason=stop_reason_to_pb(out.stop_reason),
        error_kind=ERROR_KIND_TO_PB[out.error_kind],  # type: ignore[arg-type]
    )


class WorkerControlService(pb_grpc.WorkerControlServicer):
    def __init__(self, controller: GroupController) -> None:
        self.controller = controller

    async def Prefill(
        self, request: pb.PrefillRequest, context: grpc.aio.ServicerContext
    ) -> pb.PrefillResponse:
        start = time_ms()
        try:
            sampling = sampling_from_pb(request.sampling)
            done = await self.controller.prefill(
                request.request_id, list(request.prompt_token_ids), sampling
            )
        except EngineRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except GroupUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        out = done.output
        if out.error_kind is not None:
            await context.abort(_STATUS[out.error_kind], out.error)
        return pb.PrefillResponse(
            request_id=out.request_id,
            first_token_id=out.token_ids[0] if out.token_ids else 0,
            text=out.text,
            finish_reason=FINISH_TO_PB[out.finish_reason],  # type: ignore[arg-type]
            kv=out.kv.to_proto() if out.kv is not None else None,
            queue_ms=done.queue_s * 1e3,
            prefill_ms=time_ms() - start,
            first_logprobs=logprobs_to_pb(out.logprobs[0]) if out.logprobs else None,
            prompt_logprobs=[logprobs_to_pb(lp) for lp in out.prompt_logprobs or ()],
            stop_reason=stop_reason_to_pb(out.stop_reason),
        )

    async def Decode(
        self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TokenEvent]:
        try:
            sampling = sampling_from_pb(request.sampling)
            kv = TransferHandle.from_proto(request.kv) if request.HasField("kv") else None
            first = request.first_token_id if request.HasField("first_token_id") else None
            stream = self.controller.decode(
                request.request_id, list(request.prompt_token_ids), sampling, first, kv
            )
            first_out = await anext(stream)
        except EngineRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except KVTransferError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"kv: {exc}")
        except GroupUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if first_out.error_kind is ErrorKind.INVALID_REQUEST:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, first_out.error)
        try:
            yield token_event(first_out)
            async for out in stream:
                yield token_event(out)
        finally:
            await stream.aclose()  # a client that went away cancels the request

    async def Cancel(self, request: pb.CancelRequest, context: grpc.aio.ServicerContext) -> pb.CancelResponse:
        return pb.CancelResponse(found=await self.controller.cancel(request.request_id))

    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthResponse:
        c = self.controller
        return pb.HealthResponse(
            serving=c.healthy,
            role=ROLE_TO_PB[c.spec.role],
            group_id=c.spec.group_id,
            num_ranks=c.spec.ep_size,
            message=c.status_message,
        )

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        try:
            s = await self.controller.stats()
        except GroupUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return pb.StatsResponse(
            role=ROLE_TO_PB[s.role],
            group_id=s.group_id,
            block_size=s.block_size,
            num_free_blocks=s.num_free_blocks,
            num_used_blocks=s.num_used_blocks,
            queue_depth=s.queue_depth,
            ranks=[
                pb.RankStats(
                    rank=r.rank,
                    num_blocks=r.num_blocks,
                    num_used_blocks=r.num_used_blocks,
                    num_leased_blocks=r.num_leased_blocks,
                    num_running=r.num_running,
                    num_waiting=r.num_waiting + r.num_importing,
                    num_steps=r.num_steps,
                    num_preemptions=r.num_preemptions,
                )
                for r in s.ranks
            ],
        )


_STATUS = {
    ErrorKind.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.KV_TRANSFER: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorKind.GROUP_FAILED: grpc.StatusCode.UNAVAILABLE,
}


def add_control_service(server: grpc.aio.Server, service: WorkerControlService) -> None:
    """Register `service` with requests parsed in the servicer, so that bytes which are not the
    request message answer INVALID_ARGUMENT naming its type (the generated
    `add_WorkerControlServicer_to_server` lets grpc's deserializer fail them as UNKNOWN)."""
    server.add_generic_rpc_handlers((parsing_generic_handler(CONTROL_SERVICE, service),))


def time_ms() -> float:
    return asyncio.get_running_loop().time() * 1e3


class ControlServer:
    """A group controller with its gRPC control service on host:port (port 0 = any).

    `start()` starts the controller, then listens. A supervisor instead calls `listen()` first and
    starts (and restarts) the controller itself, so the group keeps one address for its whole life
    and answers UNAVAILABLE while its ranks start.
    """

    def __init__(self, controller: GroupController, security: GrpcSecurity | None = None) -> None:
        self.controller = controller
        self.security = security or GrpcSecurity()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self, host: str = "127.0.0.1", port: int = 0, advertise_host: str | None = None) -> str:
        await self.controller.start()
        return await self.listen(host, port, advertise_host)

    async def listen(self, host: str = "127.0.0.1", port: int = 0, advertise_host: str | None = None) -> str:
        """Serve the control service (the controller may start later); returns the address."""
        server = new_server(self.security)
        add_control_service(server, WorkerControlService(self.controller))
        self.port = self.security.add_port(server, f"{host}:{port}")
        await server.start()
        self._server = server
        self.address = f"{advertise_host or host}:{self.port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=2.0)
            self._server = None
        await self.controller.close()
