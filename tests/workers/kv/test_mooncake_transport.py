"""The Mooncake transfer-engine backend over its `tcp` protocol (skipped where it cannot load)."""

from __future__ import annotations

import os

import pytest
from moeplane.workers.kv.buffers import BufferSink, BufferSource
from moeplane.workers.kv.errors import ChecksumMismatch
from moeplane.workers.kv.layout import KVBackend, KVDtype, KVLayout
from moeplane.workers.kv.mooncake_backend import MooncakeKVTransport, MooncakeUnavailable, import_engine
from moeplane.workers.kv.transport import ReleaseReason

pytestmark = pytest.mark.integration

try:
    import_engine()
    SKIP = ""
except MooncakeUnavailable as exc:
    SKIP = str(exc)


@pytest.mark.skipif(bool(SKIP), reason=f"Mooncake backend unavailable: {SKIP}")
async def test_mooncake_tcp_pull_verifies_and_acks() -> None:
    server, client = MooncakeKVTransport(), MooncakeKVTransport()
    await server.start()
    await client.start()
    try:
        data = bytearray(os.urandom(3 * 1024 * 1024))
        layout = KVLayout(2, len(data) // 8, 1, KVDtype.FLOAT32)
        released: list = []
        handle = server.offer("m1", layout, BufferSource(data), 30.0, lambda t, r: released.append((t, r)))
        assert handle.backend is KVBackend.MOONCAKE and handle.descriptor
        sink = BufferSink(bytearray(len(data)))
        stats = await client.pull(handle, sink)
        assert bytes(sink.view) == bytes(data) and stats.num_bytes == len(data)
        assert released == [("m1", ReleaseReason.ACKED)] and server.num_leases == 0

        # the sender's checksum is part of the handle: a payload that changed after the offer is caught
        data2 = bytearray(os.urandom(1024 * 1024))
        handle2 = server.offer(
            "m2",
            KVLayout(1, len(data2) // 4, 1, KVDtype.FLOAT32),
            BufferSource(data2),
            30.0,
            lambda t, r: released.append((t, r)),
        )
        tampered = handle2.descriptor.replace(b'"checksum": ', b'"checksum": 1')
        bad = type(handle2)(
            handle2.transfer_id, handle2.address, handle2.backend, handle2.layout, 0.0, tampered
        )
        with pytest.raises(ChecksumMismatch):
            await client.pull(bad, BufferSink(bytearray(len(data2))))
        assert released[-1] == ("m2", ReleaseReason.FAILED)
    finally:
        await client.close()
        await server.close()
