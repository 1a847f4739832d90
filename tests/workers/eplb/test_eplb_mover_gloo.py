"""Weight moves over a real two-rank gloo group: stage, barrier, commit; every slot checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from moeplane.workers.net import free_port

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("gloo_mover_worker.py")


def test_two_ranks_move_weights_to_the_new_placement() -> None:
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), "2", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=120)  # two torch imports on a loaded 2-core box
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append(out)
    for rank, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, out
        assert f"rank {rank} OK" in out
