"""The malloc tuning of the KV transport, in fresh interpreters: with it, a freed megabyte-sized
buffer (a chunk's) is reused instead of unmapped, so the next chunk does not page-fault."""

from __future__ import annotations

import subprocess
import sys

import pytest
from moeplane.workers.kv.malloc import MallocTuning, MiB

PROBE = """
import ctypes, resource, sys
from moeplane.workers.kv.malloc import tune_malloc_for_streaming
if sys.argv[1] == "tuned":
    assert tune_malloc_for_streaming()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
n = 3 << 20  # a few 1 MiB frames' worth, above glibc's default mmap threshold (128 KiB)
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(" ".join(map(str, faults)))
"""


def faults(mode: str) -> list[int]:
    """Page faults of each of four malloc/touch/free cycles of a 3 MiB buffer in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return [int(f) for f in out.stdout.split()]


PAGES = (3 << 20) // 4096  # 768


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and ru_minflt are Linux's")
def test_tuned_malloc_reuses_freed_buffers() -> None:
    # Untuned, the buffer is mmapped and unmapped on free, so the next cycle faults on its pages
    # again; tuned, it stays on the heap and later cycles touch resident pages. Counted in one
    # thread, so the figures do not depend on load (the gRPC CPU cost is bench/kv_transfer.py's).
    default, tuned = faults("default"), faults("tuned")
    assert default[1] > PAGES // 2, default
    assert all(f < PAGES // 16 for f in tuned[1:]), tuned


@pytest.mark.unit
def test_tuning_values_are_checked() -> None:
    with pytest.raises(ValueError, match="mmap_threshold_bytes must be in"):
        MallocTuning(mmap_threshold_bytes=64 * MiB)
    with pytest.raises(ValueError, match="trim_threshold_bytes"):
        MallocTuning(trim_threshold_bytes=MiB)
