"""The gRPC KV transport over real loopback gRPC: chunked integrity, corruption detection (a TCP
proxy flips one payload byte in flight), status codes, leases, auth and TLS."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest
from moeplane.protos import kv_transfer_pb2 as pb
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.kv.buffers import BufferSink, BufferSource
from moeplane.workers.kv.errors import ChecksumMismatch, KVErrorKind, TransferNotFound, TransferSizeMismatch
from moeplane.workers.kv.grpc_backend import GrpcKVTransport
from moeplane.workers.kv.layout import KVDtype, KVLayout, TransferHandle
from moeplane.workers.kv.transport import ReleaseReason

from tests.workers.kv.tls_certs import self_signed

pytestmark = pytest.mark.integration

CHUNK = 256 * 1024
MARKER = b"<<MOEPLANE-CORRUPT-ME>>" * 4


def payload(num_bytes: int) -> bytearray:
    data = bytearray(os.urandom(num_bytes))
    at = num_bytes * 2 // 3  # well inside the stream, in the middle of some chunk
    data[at : at + len(MARKER)] = MARKER
    return data


def layout_for(num_bytes: int) -> KVLayout:
    assert num_bytes % 4 == 0
    return KVLayout(num_layers=1, num_tokens=num_bytes // 4, kv_elems=1, dtype=KVDtype.FLOAT32)


@pytest.fixture
async def pair():
    server, client = GrpcKVTransport(chunk_bytes=CHUNK), GrpcKVTransport(chunk_bytes=CHUNK)
    await server.start()
    yield server, client
    await client.close()
    await server.close()


def offer(server: GrpcKVTransport, tid: str, data: bytearray, released: list, lease_s: float = 30.0):
    return server.offer(
        tid, layout_for(len(data)), BufferSource(data), lease_s, lambda t, r: released.append((t, r))
    )


async def test_chunked_transfer_is_exact_and_acks(pair) -> None:
    server, client = pair
    data = payload(3 * 1024 * 1024 + 4 * 1001)  # not a multiple of the chunk
    released: list = []
    handle = offer(server, "t1", data, released)
    sink = BufferSink(bytearray(len(data)))
    stats = await client.pull(handle, sink)
    assert bytes(sink.view) == bytes(data)
    assert stats.num_chunks == -(-len(data) // CHUNK) == 13 and stats.num_bytes == len(data)
    assert released == [("t1", ReleaseReason.ACKED)] and server.num_leases == 0


@pytest.mark.parametrize("streams", [2, 3])
async def test_parallel_streams_reassemble_exactly(streams: int) -> None:
    server = GrpcKVTransport(chunk_bytes=CHUNK)
    client = GrpcKVTransport(chunk_bytes=CHUNK, streams=streams)
    await server.start()
    data = payload(5 * CHUNK + 4 * 77)
    released: list = []
    handle = offer(server, "par", data, released)
    sink = BufferSink(bytearray(len(data)))
    stats = await client.pull(handle, sink)
    assert bytes(sink.view) == bytes(data) and stats.num_chunks == 6
    assert released == [("par", ReleaseReason.ACKED)]
    await client.close()
    await server.close()


async def test_empty_payload(pair) -> None:
    server, client = pair
    released: list = []
    handle = offer(server, "empty", bytearray(), released)
    stats = await client.pull(handle, BufferSink(bytearray()))
    assert stats.num_bytes == 0 and stats.num_chunks == 1 and released == [("empty", ReleaseReason.ACKED)]


class FlipProxy:
    """A TCP proxy that flips one byte of the first MARKER it sees from server to client."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flipped = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, corrupt: bool) -> None:
            tail = b""
            while data := await src.read(65536):
                if corrupt and not self.flipped:
                    window = tail + data
                    at = window.find(MARKER)
                    if at >= 0 and at + 40 >= len(tail):
                        i = at + 40 - len(tail)
                        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                        self.flipped += 1
                    tail = window[-len(MARKER) :]
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(
            pump(reader, up_writer, False), pump(up_reader, writer, True), return_exceptions=True
        )

    async def close(self) -> None:
        self.server.close()


async def test_corrupted_chunk_is_detected_and_nothing_is_lost(pair) -> None:
    server, client = pair
    data = payload(2 * 1024 * 1024)
    released: list = []
    handle = offer(server, "t2", data, released)
    proxy = FlipProxy(int(handle.address.rsplit(":", 1)[1]))
    via_proxy = TransferHandle(
        handle.transfer_id, f"127.0.0.1:{await proxy.start()}", handle.backend, handle.layout, 0.0
    )
    sink = BufferSink(bytearray(len(data)))
    with pytest.raises(ChecksumMismatch, match=r"chunk 5 at offset 1310720 .* is corrupt") as info:
        await client.pull(via_proxy, sink)
    assert info.value.kind is KVErrorKind.DATA_LOSS and proxy.flipped == 1
    # the failure was acked: the prefill side freed its blocks at once
    assert released == [("t2", ReleaseReason.FAILED)]
    await proxy.close()


async def test_failed_pull_leaves_the_lease_for_a_retry_when_not_acked(pair) -> None:
    """A client whose ack never arrives (it died) leaves the lease to expire, and a retry works."""
    server, client = pair
    data = payload(1024 * 1024)
    released: list = []
    handle = offer(server, "t3", data, released)
    proxy = FlipProxy(int(handle.address.rsplit(":", 1)[1]))
    via_proxy = TransferHandle(
        handle.transfer_id, f"127.0.0.1:{await proxy.start()}", handle.backend, handle.layout, 0.0
    )
    with pytest.raises(ChecksumMismatch):
        await client.client.stream_into(via_proxy, BufferSink(bytearray(len(data))), 10.0, 0.0)
    assert server.num_leases == 1 and released == []
    sink = BufferSink(bytearray(len(data)))
    await client.pull(handle, sink)
    assert bytes(sink.view) == bytes(data) and released == [("t3", ReleaseReason.ACKED)]
    await proxy.close()


async def test_status_codes(pair) -> None:
    server, client = pair
    data = payload(512 * 1024)
    released: list = []
    handle = offer(server, "t4", data, released)
    ghost = TransferHandle("nope", handle.address, handle.backend, handle.layout, 0.0)
    with pytest.raises(TransferNotFound, match="NOT_FOUND") as info:
        await client.pull(ghost, BufferSink(bytearray(len(data))))
    assert info.value.kind is KVErrorKind.NOT_FOUND
    # raw calls, to see the codes on the wire
    async with grpc.aio.insecure_channel(handle.address) as channel:
        pull = channel.unary_stream("/moeplane.kv.v1.KVTransfer/Pull")
        wrong = pb.PullRequest(transfer_id="t4", expected_bytes=len(data) + 4).SerializeToString()
        with pytest.raises(grpc.aio.AioRpcError) as rpc:
            async for _ in pull(wrong):
                pass
        assert rpc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert f"holds {len(data)} bytes, the client expects {len(data) + 4}" in (rpc.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as rpc:
            async for _ in pull(b"\xff\xff\xff"):
                pass
        assert rpc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        bad_chunk = pb.PullRequest(transfer_id="t4", chunk_bytes=100, expected_bytes=len(data))
        with pytest.raises(grpc.aio.AioRpcError) as rpc:
            async for _ in pull(bad_chunk.SerializeToString()):
                pass
        assert rpc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(TransferSizeMismatch):
        await client.pull(handle, BufferSink(bytearray(len(data) - 4)))
    # none of that disturbed the transfer
    assert server.num_leases == 1 and released == []
    desc = await client.describe(handle)
    assert desc.num_chunks == 2 and desc.layout.total_bytes == len(data)
    sink = BufferSink(bytearray(len(data)))
    await client.pull(handle, sink)
    assert bytes(sink.view) == bytes(data)


async def wait_for_expiry(server: GrpcKVTransport, timeout_s: float = 30.0) -> list[str]:
    """Poll `expire()` until it drops a lease (the event), with a generous bound."""
    deadline = time.monotonic() + timeout_s
    while not (expired := server.expire()):
        assert time.monotonic() < deadline, f"no lease expired within {timeout_s}s"
        await asyncio.sleep(0.02)
    return expired


async def test_expired_lease_releases_and_then_is_not_found(pair) -> None:
    """The transport's expiry, seen through the wire. When a lease falls due is the lease table's
    (test_kv_framing drives it with a fake clock); here we wait for the expiry, not for a duration."""
    server, client = pair
    released: list = []
    handle = offer(server, "t5", payload(256 * 1024), released, lease_s=0.2)
    assert await wait_for_expiry(server) == ["t5"]
    assert released == [("t5", ReleaseReason.EXPIRED)] and server.num_leases == 0
    with pytest.raises(TransferNotFound):
        await client.pull(handle, BufferSink(bytearray(256 * 1024)))


async def test_shared_token_is_required() -> None:
    security = GrpcSecurity(token="s3cret")
    server = GrpcKVTransport(chunk_bytes=CHUNK, security=security)
    await server.start()
    data = payload(256 * 1024)
    released: list = []
    handle = offer(server, "t6", data, released)
    anonymous, wrong = GrpcKVTransport(), GrpcKVTransport(security=GrpcSecurity(token="guess"))
    for client in (anonymous, wrong):
        with pytest.raises(Exception, match="UNAUTHENTICATED") as info:
            await client.pull(handle, BufferSink(bytearray(len(data))))
        assert info.value.kind is KVErrorKind.UNAUTHENTICATED  # type: ignore[attr-defined]
        await client.close()
    assert server.num_leases == 1  # the unauthenticated acks were refused too
    good = GrpcKVTransport(security=security)
    sink = BufferSink(bytearray(len(data)))
    await good.pull(handle, sink)
    assert bytes(sink.view) == bytes(data)
    await good.close()
    await server.close()


async def test_tls_with_token(tmp_path: Path) -> None:
    security = GrpcSecurity(token="t", tls=self_signed(tmp_path, "moeplane-kv.test"))
    server = GrpcKVTransport(chunk_bytes=CHUNK, security=security)
    await server.start()
    data = payload(600 * 1024)
    released: list = []
    handle = offer(server, "t7", data, released)
    plaintext = GrpcKVTransport(security=GrpcSecurity(token="t"))
    with pytest.raises(Exception, match="UNAVAILABLE"):
        # A refused handshake fails the call at once; the deadline is only a generous bound.
        await plaintext.pull(handle, BufferSink(bytearray(len(data))), timeout_s=30.0)
    await plaintext.close()
    client = GrpcKVTransport(security=security)
    sink = BufferSink(bytearray(len(data)))
    await client.pull(handle, sink)
    assert bytes(sink.view) == bytes(data) and released == [("t7", ReleaseReason.ACKED)]
    await client.close()
    await server.close()
