"""Client side of the gRPC KV service: pull a payload (over one or several parallel streams, each
on its own connection), verify every frame, and ack; Describe and Checksum."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc
import grpc.aio
from moeplane.protos import kv_transfer_pb2 as pb
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.kv.buffers import KVSink
from moeplane.workers.kv.checksum import TransferDigest
from moeplane.workers.kv.errors import (
    ChecksumMismatch,
    KVErrorKind,
    KVTransferError,
    TransferNotFound,
    TransferSizeMismatch,
)
from moeplane.workers.kv.frames import FrameChecker, chunk_ranges, decode_frame
from moeplane.workers.kv.layout import TransferHandle
from moeplane.workers.kv.transport import PullStats

log = logging.getLogger(__name__)

SERVICE = "moeplane.kv.v1.KVTransfer"

STATUS_OF_KIND = {
    KVErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    KVErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    KVErrorKind.DATA_LOSS: grpc.StatusCode.DATA_LOSS,
    KVErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    KVErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    KVErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    KVErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}
KIND_OF_STATUS = {status: kind for kind, status in STATUS_OF_KIND.items()}


def error_from_rpc(exc: grpc.aio.AioRpcError, what: str) -> KVTransferError:
    kind = KIND_OF_STATUS.get(exc.code(), KVErrorKind.INTERNAL)
    cls = {
        KVErrorKind.NOT_FOUND: TransferNotFound,
        KVErrorKind.INVALID_ARGUMENT: TransferSizeMismatch,
        KVErrorKind.DATA_LOSS: ChecksumMismatch,
    }.get(kind, KVTransferError)
    return cls(f"{what}: {exc.code().name}: {exc.details()}", kind)


class GrpcKVClient:
    """Pulls from peers' KV services. Channels are cached per (address, stream)."""

    def __init__(self, security: GrpcSecurity, chunk_bytes: int, streams: int = 1) -> None:
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self._security = security
        self._chunk_bytes = chunk_bytes
        self._streams = streams
        self._channels: dict[tuple[str, int], grpc.aio.Channel] = {}

    def _channel(self, address: str, stream: int = 0) -> grpc.aio.Channel:
        channel = self._channels.get((address, stream))
        if channel is None:
            # A distinct channel argument per stream gives each stream its own TCP connection.
            channel = self._security.channel(address, extra_options=(("moeplane.kv_stream", stream),))
            self._channels[(address, stream)] = channel
        return channel

    async def pull(self, handle: TransferHandle, sink: KVSink, timeout_s: float = 60.0) -> PullStats:
        if sink.total_bytes != handle.layout.total_bytes:
            raise TransferSizeMismatch(
                f"sink holds {sink.total_bytes} bytes, the handle's layout {handle.layout.total_bytes}"
            )
        start = time.perf_counter()
        try:
            stats = await self.stream_into(handle, sink, timeout_s, start)
        except KVTransferError as exc:
            await self.ack(handle, success=False, error=str(exc))
            raise
        except asyncio.CancelledError:
            # The decode side dropped the request: free the prefill's blocks now, not at expiry.
            await asyncio.shield(self.ack(handle, success=False, error="cancelled by the decode side"))
            raise
        await self.ack(handle, success=True)
        return stats

    async def stream_into(
        self, handle: TransferHandle, sink: KVSink, timeout_s: float, start: float
    ) -> PullStats:
        """Pull and verify without acking (`pull` acks)."""
        total = sink.total_bytes
        ranges = chunk_ranges(total, self._chunk_bytes, self._streams)
        checkers = [FrameChecker(first, count, self._chunk_bytes, total) for first, count in ranges]
        tasks = [
            asyncio.ensure_future(self._stream_range(handle, sink, checker, i, timeout_s))
            for i, checker in enumerate(checkers)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        whole = TransferDigest()
        for checker in checkers:
            for i, crc in enumerate(checker.crcs):
                offset = (checker.first_chunk + i) * self._chunk_bytes
                whole.update(offset, min(self._chunk_bytes, total - offset), crc)
        return PullStats(total, whole.num_chunks, time.perf_counter() - start, whole.value)

    async def _stream_range(
        self, handle: TransferHandle, sink: KVSink, checker: FrameChecker, stream: int, timeout_s: float
    ) -> None:
        method = self._channel(handle.address, stream).unary_stream(
            f"/{SERVICE}/Pull", request_serializer=None, response_deserializer=None
        )
        request = pb.PullRequest(
            transfer_id=handle.transfer_id,
            chunk_bytes=self._chunk_bytes,
            expected_bytes=sink.total_bytes,
            first_chunk=checker.first_chunk,
            num_chunks=checker.num_chunks,
        ).SerializeToString()
        try:
            call = method(request, timeout=timeout_s, metadata=self._security.call_metadata())
            async for frame in call:
                header, payload = decode_frame(frame)
                checker.check(header, payload)
                sink.write(header.offset, payload)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"pull of {handle.transfer_id} from {handle.address}") from None
        checker.finish()

    async def ack(self, handle: TransferHandle, success: bool, error: str = "") -> bool:
        """Tell the prefill side to free the blocks; False if the lease was already gone."""
        stub = self._channel(handle.address).unary_unary(
            f"/{SERVICE}/Ack",
            request_serializer=pb.AckRequest.SerializeToString,
            response_deserializer=pb.AckResponse.FromString,
        )
        try:
            reply = await stub(
                pb.AckRequest(transfer_id=handle.transfer_id, success=success, error=error[:1000]),
                timeout=10.0,
                metadata=self._security.call_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            # The lease expires on its own; an unreachable peer is not this request's failure.
            log.warning("ack of %s to %s failed: %s", handle.transfer_id, handle.address, exc.code().name)
            return False
        return bool(reply.released)

    async def describe(self, handle: TransferHandle) -> pb.DescribeResponse:
        stub = self._channel(handle.address).unary_unary(
            f"/{SERVICE}/Describe",
            request_serializer=pb.DescribeRequest.SerializeToString,
            response_deserializer=pb.DescribeResponse.FromString,
        )
        try:
            return await stub(
                pb.DescribeRequest(transfer_id=handle.transfer_id),
                timeout=10.0,
                metadata=self._security.call_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"describe {handle.transfer_id}") from None

    async def remote_checksum(self, handle: TransferHandle) -> int:
        """The prefill side's CRC-32 of the whole payload (an independent end-to-end check)."""
        stub = self._channel(handle.address).unary_unary(
            f"/{SERVICE}/Checksum",
            request_serializer=pb.ChecksumRequest.SerializeToString,
            response_deserializer=pb.ChecksumResponse.FromString,
        )
        try:
            reply = await stub(
                pb.ChecksumRequest(transfer_id=handle.transfer_id),
                timeout=30.0,
                metadata=self._security.call_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, f"checksum of {handle.transfer_id}") from None
        if reply.total_bytes != handle.layout.total_bytes:
            raise TransferSizeMismatch(
                f"transfer {handle.transfer_id} holds {reply.total_bytes} bytes, expected "
                f"{handle.layout.total_bytes}"
            )
        return int(reply.crc32)

    async def close(self) -> None:
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        self._channels.clear()
