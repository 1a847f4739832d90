"""The malloc tuning of the KV transport, in fresh interpreters: with it, a real gRPC pull (server
and client in one process, 3 x 48 MiB over loopback) stops page-faulting on every chunk buffer."""

from __future__ import annotations

import subprocess
import sys

import pytest
from moeplane.workers.kv.malloc import MallocTuning, MiB

PROBE = """
import asyncio, os, resource, sys
from moeplane.workers.kv.buffers import BufferSink, BufferSource
from moeplane.workers.kv.grpc_backend import GrpcKVTransport
from moeplane.workers.kv.layout import KVDtype, KVLayout

async def main(tuned):
    n = 48 << 20
    payload, dst = bytearray(os.urandom(1 << 20)) * 48, bytearray(n)
    server = GrpcKVTransport(tune_malloc=tuned)
    await server.start()
    client = GrpcKVTransport(tune_malloc=tuned)
    layout = KVLayout(num_layers=1, num_tokens=n, kv_elems=1, dtype=KVDtype.FLOAT8_E4M3)
    for i in range(4):  # the first pull warms up: connection, heap growth
        if i == 1:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        handle = server.offer(f"t{i}", layout, BufferSource(payload), 60, lambda *_: None)
        await client.pull(handle, BufferSink(dst))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    await client.close()
    await server.close()

asyncio.run(main(sys.argv[1] == "tuned"))
"""


def faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and ru_minflt are Linux's")
def test_tuned_malloc_reuses_chunk_buffers() -> None:
    default, tuned = faults("default"), faults("tuned")
    # 144 MiB is 36,864 pages; untuned, a good share of them fault again in each pull's buffers
    # (measured 13k-23k here), tuned well under a thousand.
    assert default > 5_000, default
    assert tuned * 5 < default, (tuned, default)


@pytest.mark.unit
def test_tuning_values_are_checked() -> None:
    with pytest.raises(ValueError, match="mmap_threshold_bytes must be in"):
        MallocTuning(mmap_threshold_bytes=64 * MiB)
    with pytest.raises(ValueError, match="trim_threshold_bytes"):
        MallocTuning(trim_threshold_bytes=MiB)
