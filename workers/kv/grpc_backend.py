"""The default KV transport: gRPC aio, payload streamed as raw frames with identity serializers.

`Pull` is registered by hand (request and response serializers are None), so each 256 KiB–1 MiB
chunk crosses gRPC as the bytes object the sender built, header included, with no protobuf
encoding on either side. Describe, Checksum and Ack are ordinary protobuf methods, parsed in the
servicer (`kv.rpc_parse`) so that bytes which do not parse are INVALID_ARGUMENT.

Domain errors map to status codes: unknown transfer -> NOT_FOUND, size or layout mismatch ->
INVALID_ARGUMENT, checksum/missing chunk -> DATA_LOSS. A failed pull leaves the server's lease and
the client's other blocks untouched.

Throughput is bounded by grpcio itself (bench/kv_transfer.py's `grpc_floor` row: prebuilt 1 MiB
messages, no checks, reach ~0.65-0.7x a raw asyncio socket on a quiet 16-core host). Per message,
grpcio 1.85's Cython copies each slice of a received message into a bytes object and joins them
(two copies), copies every sent message into a core slice, and hops between its event-engine threads,
its poller thread and the event loop. HTTP/2 framing is not the cost: DATA frames are already
130-440 KB (SETTINGS_MAX_FRAME_SIZE is 4 MiB, and `grpc.http2.max_frame_size` does not change it).
Parallel streams gain 2-3% on 16 cores; without effect or worse: building and verifying frames on
worker threads (GIL hand-offs cost more than they overlap), the tcp_rcv_lowat and
tcp_frame_size_tuning experiments.
What does pay: open channels reused across pulls (GrpcKVClient caches them) and `kv.malloc`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
from moeplane.protos import kv_transfer_pb2 as pb
from moeplane.workers.grpc_security import GrpcSecurity, advertised_host, new_server
from moeplane.workers.kv.buffers import KVSink, KVSource
from moeplane.workers.kv.checksum import crc32
from moeplane.workers.kv.errors import KVTransferError, TransferSizeMismatch
from moeplane.workers.kv.frames import (
    DEFAULT_CHUNK_BYTES,
    FrameEncoder,
    check_chunk_bytes,
    num_chunks_of,
)
from moeplane.workers.kv.grpc_client import SERVICE, STATUS_OF_KIND, GrpcKVClient
from moeplane.workers.kv.layout import KVBackend, KVLayout, TransferHandle
from moeplane.workers.kv.leases import LeaseTable
from moeplane.workers.kv.malloc import tune_malloc_for_streaming
from moeplane.workers.kv.rpc_parse import parse_request, parsed_unary
from moeplane.workers.kv.transport import KVTransport, OnRelease, PullStats, ReleaseReason

log = logging.getLogger(__name__)


@dataclass
class _Offer:
    layout: KVLayout
    source: KVSource
    on_release: OnRelease


class GrpcKVTransport(KVTransport):
    """Serves offered KV on `host:port` and pulls from peers' transports."""

    backend = KVBackend.GRPC

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        security: GrpcSecurity | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        advertise_host: str | None = None,
        streams: int = 1,
        tune_malloc: bool = True,
    ) -> None:
        """`tune_malloc`: keep 1 MiB buffers on the heap process-wide (`kv.malloc`), which cuts
        the CPU cost of a transfer by about a third."""
        if tune_malloc:
            tune_malloc_for_streaming()
        self._host, self._port = host, port
        self._advertise_host = advertised_host(host, advertise_host)
        self._security = security or GrpcSecurity()
        self._chunk_bytes = check_chunk_bytes(chunk_bytes)
        self._leases: LeaseTable[_Offer] = LeaseTable()
        self._server: grpc.aio.Server | None = None
        self._bound_port = 0
        self.client = GrpcKVClient(self._security, self._chunk_bytes, streams)

    # ---- server side --------------------------------------------------------------------------
    @property
    def address(self) -> str:
        if not self._bound_port:
            raise RuntimeError("GrpcKVTransport.start() has not run")
        return f"{self._advertise_host}:{self._bound_port}"

    async def start(self) -> None:
        server = new_server(self._security)
        server.add_generic_rpc_handlers((self._handlers(),))
        self._bound_port = self._security.add_port(server, f"{self._host}:{self._port}")
        await server.start()
        self._server = server

    def _handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Describe": grpc.unary_unary_rpc_method_handler(
                    parsed_unary(pb.DescribeRequest, self._describe),
                    request_deserializer=None,
                    response_serializer=pb.DescribeResponse.SerializeToString,
                ),
                # Identity serializers: raw bytes in, raw frames out.
                "Pull": grpc.unary_stream_rpc_method_handler(
                    self._pull, request_deserializer=None, response_serializer=None
                ),
                "Checksum": grpc.unary_unary_rpc_method_handler(
                    parsed_unary(pb.ChecksumRequest, self._checksum),
                    request_deserializer=None,
                    response_serializer=pb.ChecksumResponse.SerializeToString,
                ),
                "Ack": grpc.unary_unary_rpc_method_handler(
                    parsed_unary(pb.AckRequest, self._ack),
                    request_deserializer=None,
                    response_serializer=pb.AckResponse.SerializeToString,
                ),
            },
        )

    def offer(
        self, transfer_id: str, layout: KVLayout, source: KVSource, lease_s: float, on_release: OnRelease
    ) -> TransferHandle:
        if source.total_bytes != layout.total_bytes:
            raise TransferSizeMismatch(
                f"source holds {source.total_bytes} bytes but layout {layout} needs {layout.total_bytes}"
            )
        self._leases.grant(transfer_id, _Offer(layout, source, on_release), lease_s)
        return TransferHandle(transfer_id, self.address, self.backend, layout, time.time() + lease_s)

    def release(self, transfer_id: str, reason: ReleaseReason) -> bool:
        offer = self._leases.release(transfer_id)
        if offer is None:
            return False
        self._release(transfer_id, offer, reason)
        return True

    def expire(self) -> list[str]:
        expired = self._leases.expire()
        for tid, offer in expired:
            self._release(tid, offer, ReleaseReason.EXPIRED)
        return [tid for tid, _ in expired]

    @property
    def num_leases(self) -> int:
        return len(self._leases)

    def _release(self, transfer_id: str, offer: _Offer, reason: ReleaseReason) -> None:
        try:
            offer.on_release(transfer_id, reason)
        except Exception:  # a failing callback must not take the server down with it
            log.exception("on_release of transfer %s (%s) failed", transfer_id, reason)

    async def _describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeResponse:
        try:
            lease = self._leases.get(request.transfer_id)
        except KVTransferError as exc:
            await context.abort(STATUS_OF_KIND[exc.kind], str(exc))
            raise  # unreachable: abort raises
        total = lease.item.layout.total_bytes
        return pb.DescribeResponse(
            layout=lease.item.layout.to_proto(),
            chunk_bytes=self._chunk_bytes,
            num_chunks=num_chunks_of(total, self._chunk_bytes),
            lease_expires_at_s=time.time() + self._leases.remaining_s(request.transfer_id),
        )

    async def _pull(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        req = await parse_request(pb.PullRequest, request, context)
        try:
            chunk_bytes = check_chunk_bytes(req.chunk_bytes) if req.chunk_bytes else self._chunk_bytes
            offer = self._leases.begin_pull(req.transfer_id)
        except KVTransferError as exc:
            await context.abort(STATUS_OF_KIND[exc.kind], str(exc))
        try:
            total = offer.source.total_bytes
            if req.expected_bytes != total:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"transfer {req.transfer_id!r} holds {total} bytes, the client expects "
                    f"{req.expected_bytes}",
                )
            num_chunks = num_chunks_of(total, chunk_bytes)
            count = req.num_chunks or num_chunks - req.first_chunk
            if req.first_chunk + count > num_chunks or count < 1:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"chunks {req.first_chunk}..{req.first_chunk + count - 1} are outside the "
                    f"{num_chunks} chunks of transfer {req.transfer_id!r}",
                )
            encoder = FrameEncoder(offer.source, req.first_chunk, count, chunk_bytes)
            for index in range(req.first_chunk, encoder.last_chunk + 1):
                yield encoder.frame(index)
        finally:
            self._leases.end_pull(req.transfer_id)

    async def _checksum(
        self, request: pb.ChecksumRequest, context: grpc.aio.ServicerContext
    ) -> pb.ChecksumResponse:
        try:
            lease = self._leases.get(request.transfer_id)
        except KVTransferError as exc:
            await context.abort(STATUS_OF_KIND[exc.kind], str(exc))
            raise
        source = lease.item.source
        return pb.ChecksumResponse(
            crc32=crc32(source.read(0, source.total_bytes)), total_bytes=source.total_bytes
        )

    async def _ack(self, request: pb.AckRequest, context: grpc.aio.ServicerContext) -> pb.AckResponse:
        offer = self._leases.release(request.transfer_id)
        if offer is None:
            return pb.AckResponse(released=False)
        if not request.success:
            log.warning("transfer %s failed on the decode side: %s", request.transfer_id, request.error)
        self._release(
            request.transfer_id, offer, ReleaseReason.ACKED if request.success else ReleaseReason.FAILED
        )
        return pb.AckResponse(released=True)

    # ---- client side (delegated) ----------------------------------------------------------------
    async def pull(self, handle: TransferHandle, sink: KVSink, timeout_s: float = 60.0) -> PullStats:
        return await self.client.pull(handle, sink, timeout_s)

    async def ack(self, handle: TransferHandle, success: bool, error: str = "") -> bool:
        return await self.client.ack(handle, success, error)

    async def describe(self, handle: TransferHandle) -> pb.DescribeResponse:
        return await self.client.describe(handle)

    async def close(self) -> None:
        await self.client.close()
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
        for tid, offer in [(tid, self._leases.release(tid)) for tid, _ in self._leases.items()]:
            if offer is not None:
                self._release(tid, offer, ReleaseReason.CLOSED)


async def run_expiry(transport: KVTransport, interval_s: float = 1.0) -> None:
    """Expire leases every `interval_s` until cancelled (run as a task next to the server)."""
    while True:
        await asyncio.sleep(interval_s)
        transport.expire()
