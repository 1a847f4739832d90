"""`moeplane operator` as a process against the emulated API server, as the chart runs it: one
helper for the operator's e2e tests and the k8s_e2e tier."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from moeplane.workers.net import free_port

from tests.kube.cluster import EmulatedCluster


@dataclass(frozen=True)
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    liveness: str  # its /healthz URL


@contextmanager
def operator_process(cluster: EmulatedCluster, log: Path, *flags: str) -> Iterator[OperatorProcess]:
    """Start `moeplane operator -n default --standalone` (fast resync and waits, a liveness
    endpoint, and `flags`) with the emulated cluster's kubeconfig; yields once its liveness answers;
    stops it (SIGTERM, then SIGKILL) on exit. Its output goes to `log`."""
    liveness = f"http://127.0.0.1:{free_port('127.0.0.1')}/healthz"
    argv = [
        str(Path(sys.executable).parent / "moeplane"), "operator", "-n", "default", "--standalone",
        "--resync-seconds", "1", "--wait-seconds", "0.3", "--liveness", liveness, *flags,
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=cluster.env("operator"), stdout=out, stderr=subprocess.STDOUT)
    try:

        def alive() -> bool:
            assert proc.poll() is None, (
                f"the operator exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
            try:
                with urllib.request.urlopen(liveness, timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        cluster.wait_for(alive, timeout_s=90, what="the operator's liveness endpoint", interval_s=0.3)
        yield OperatorProcess(proc, liveness)
    finally:
        stop_process(proc)


def stop_process(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], sig: int = signal.SIGTERM, grace_s: float = 20.0
) -> None:
    """`sig` (SIGTERM; SIGINT is Ctrl-C), then SIGKILL after `grace_s`."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
