"""The KV transfer's TCP connection is cut in the middle of a transfer by a real TCP proxy that is
killed once part of the payload has gone through.

Either the decode side retries (directly, the lease is still held) and the payload arrives exact
and is acked, or it gives up and the prefill side frees the blocks when the lease runs out. The
server's half-finished stream must end (a pull in flight pins a lease forever), so no lease, and
so no KV block, is left behind on either side.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import pytest
from moeplane.workers.kv.buffers import BufferSink, BufferSource
from moeplane.workers.kv.errors import KVTransferError
from moeplane.workers.kv.grpc_backend import GrpcKVTransport
from moeplane.workers.kv.layout import KVDtype, KVLayout, TransferHandle
from moeplane.workers.kv.transport import ReleaseReason

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

CHUNK = 256 * 1024
SIZE = 16 * 1024 * 1024  # 64 chunks: the cut lands well inside the stream


class CuttingProxy:
    """Forwards TCP to `target_port` and, after `cut_after_bytes` from the server, kills every
    connection and stops listening (the peer's process is gone as far as either side can tell)."""

    def __init__(self, target_port: int, cut_after_bytes: int) -> None:
        self.target_port = target_port
        self.cut_after_bytes = cut_after_bytes
        self.downstream_bytes = 0
        self.cut = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, downstream: bool) -> None:
            while not self.cut.is_set() and (data := await src.read(65536)):
                if downstream:
                    self.downstream_bytes += len(data)
                    if self.downstream_bytes >= self.cut_after_bytes:
                        self.kill()
                        return
                dst.write(data)
                await dst.drain()

        await asyncio.gather(
            pump(reader, up_writer, False), pump(up_reader, writer, True), return_exceptions=True
        )

    def kill(self) -> None:
        self.cut.set()
        self.server.close()
        for w in self._writers:
            # abort(): an RST, not a polite FIN, like a process that died.
            with contextlib.suppress(Exception):
                w.transport.abort()


def offer(server: GrpcKVTransport, tid: str, data: bytearray, released: list, lease_s: float):
    layout = KVLayout(num_layers=1, num_tokens=len(data) // 4, kv_elems=1, dtype=KVDtype.FLOAT32)
    return server.offer(tid, layout, BufferSource(data), lease_s, lambda t, r: released.append((t, r)))


# A cut must surface as a KV error, never a hang: the pull's own gRPC deadline is far beyond
# HANG_S, so only the cut (an event) can end it before asyncio.wait_for calls it a hang.
HANG_S = 60.0
GRPC_DEADLINE_S = 300.0


async def cut_pull(client: GrpcKVTransport, handle: TransferHandle, proxy: CuttingProxy) -> None:
    """Pull through the proxy; the cut must surface as a KV error, never a hang."""
    via = TransferHandle(
        handle.transfer_id,
        f"127.0.0.1:{await proxy.start()}",
        handle.backend,
        handle.layout,
        handle.lease_expires_at_s,
    )
    with pytest.raises(KVTransferError, match=r"UNAVAILABLE|INTERNAL|CANCELLED|DATA_LOSS"):
        pull = client.pull(via, BufferSink(bytearray(SIZE)), timeout_s=GRPC_DEADLINE_S)
        await asyncio.wait_for(pull, HANG_S)
    assert proxy.cut.is_set() and SIZE // 8 <= proxy.downstream_bytes < SIZE


async def wait_for_expiry(server: GrpcKVTransport, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if expired := server.expire():
            return expired
        await asyncio.sleep(0.1)
    return []


async def test_cut_then_retry_delivers_exactly_and_releases() -> None:
    server, client = GrpcKVTransport(chunk_bytes=CHUNK), GrpcKVTransport(chunk_bytes=CHUNK)
    await server.start()
    try:
        data = bytearray(os.urandom(SIZE))
        released: list = []
        handle = offer(server, "cut-retry", data, released, lease_s=30.0)
        proxy = CuttingProxy(int(handle.address.rsplit(":", 1)[1]), cut_after_bytes=SIZE // 4)
        await cut_pull(client, handle, proxy)
        # The failure ack could not reach the server (the proxy is gone): the lease is still held
        # for a retry, and the retry over a fresh connection is exact and acked.
        assert server.num_leases == 1 and released == []
        sink = BufferSink(bytearray(SIZE))
        await client.pull(handle, sink)
        assert bytes(sink.view) == bytes(data)
        assert released == [("cut-retry", ReleaseReason.ACKED)] and server.num_leases == 0
    finally:
        await client.close()
        await server.close()


async def test_cut_then_give_up_frees_the_blocks_at_lease_expiry() -> None:
    server, client = GrpcKVTransport(chunk_bytes=CHUNK), GrpcKVTransport(chunk_bytes=CHUNK)
    await server.start()
    try:
        released: list = []
        handle = offer(server, "cut-abort", bytearray(os.urandom(SIZE)), released, lease_s=1.0)
        proxy = CuttingProxy(int(handle.address.rsplit(":", 1)[1]), cut_after_bytes=SIZE // 2)
        await cut_pull(client, handle, proxy)
        # The server's stream must have ended: a pull still "in flight" would pin the lease.
        assert await wait_for_expiry(server, timeout_s=HANG_S) == ["cut-abort"]
        assert released == [("cut-abort", ReleaseReason.EXPIRED)] and server.num_leases == 0
    finally:
        await client.close()
        await server.close()


async def test_cut_with_a_reachable_server_acks_failure_and_frees_at_once() -> None:
    """Only the data path is cut (the ack goes direct): the decode side's failure ack frees the
    prefill blocks immediately instead of waiting for the lease."""
    server, client = GrpcKVTransport(chunk_bytes=CHUNK), GrpcKVTransport(chunk_bytes=CHUNK)
    await server.start()
    try:
        released: list = []
        handle = offer(server, "cut-ack", bytearray(os.urandom(SIZE)), released, lease_s=30.0)
        proxy = CuttingProxy(int(handle.address.rsplit(":", 1)[1]), cut_after_bytes=SIZE // 3)
        via = TransferHandle(
            handle.transfer_id,
            f"127.0.0.1:{await proxy.start()}",
            handle.backend,
            handle.layout,
            handle.lease_expires_at_s,
        )
        with pytest.raises(KVTransferError):
            await asyncio.wait_for(
                client.client.stream_into(via, BufferSink(bytearray(SIZE)), GRPC_DEADLINE_S, 0.0), HANG_S
            )
        assert await client.ack(handle, success=False, error="connection cut") is True
        assert released == [("cut-ack", ReleaseReason.FAILED)] and server.num_leases == 0
    finally:
        await client.close()
        await server.close()
