"""One container's process: started in its own namespaces (sandbox.container_argv), stopped the way
the kubelet stops it (SIGTERM to its PID 1, then SIGKILL after the grace period), reaped.

The host process is `setpriv` exec'ing `unshare`; `unshare` forks the namespace's init (the launcher,
which becomes the container command by exec). SIGKILL to `unshare` takes the whole namespace down
(--kill-child), so no process of a stopped container survives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from tests.kube.podrunner.sandbox import tagged


@dataclass(frozen=True)
class Exit:
    """How a container ended, as containerStatuses report it."""

    code: int
    reason: str  # Completed, Error, OOMKilled
    signal: int | None
    started_at: float
    finished_at: float


@dataclass(frozen=True)
class Stopped:
    seconds: float
    killed: bool  # SIGTERM did not end it within the grace period


def decode_exit(returncode: int) -> tuple[int, str, int | None]:
    """(exitCode, reason, signal): a signal death is 128+N like a container runtime reports it."""
    if returncode < 0:
        return 128 - returncode, "Error", -returncode
    return returncode, "Completed" if returncode == 0 else "Error", None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


class ContainerProcess:
    """`tag` is the container's MOEPLANE_PODRUNNER value: in a shared PID namespace the container's
    orphans outlive its main process, and stopping it kills every process carrying the tag."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path, tag: str = "") -> None:
        self.argv = argv
        self.tag = tag
        self.env = env
        self.cwd = cwd
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self._stopping = False

    async def start(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"--- start {time.strftime('%H:%M:%S')}: {self.argv[-1][:300]}\n".encode())
            out.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                cwd=str(self.cwd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        self.started_at = time.time()

    @property
    def host_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def init_pid(self) -> int | None:
        """The container's main process as the host sees it (below setpriv/nsenter/unshare)."""
        pid = self.host_pid
        while pid is not None and _comm(pid) in ("setpriv", "nsenter", "unshare"):
            kids = _children(pid)
            pid = kids[0] if kids else None
        return pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def wait(self) -> Exit:
        assert self.proc is not None
        rc = await self.proc.wait()
        code, reason, sig = decode_exit(rc)
        self.note(f"exit {code} ({reason}{f', signal {sig}' if sig else ''})")
        return Exit(code, reason, sig, self.started_at, time.time())

    def note(self, text: str) -> None:
        """A runner's line in the container's log (why it stopped), as `kubectl describe` would show."""
        with contextlib.suppress(OSError), self.log.open("ab") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')}: {text}\n".encode())

    async def stop(self, grace_s: float) -> Stopped | None:
        """SIGTERM to the container's PID 1; SIGKILL to the whole namespace after `grace_s`.
        Returns how long it took and whether the grace period ran out (None: it was not running)."""
        if self.proc is None or self.proc.returncode is not None:
            return None
        self._stopping = True
        started = time.monotonic()
        init = self.init_pid()
        if init is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout=max(0.0, grace_s))
        killed = self.proc.returncode is None
        self.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), timeout=10)
        return Stopped(time.monotonic() - started, killed)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.kill_orphans()

    def kill_orphans(self) -> None:
        """SIGKILL what the container left behind (only possible in a shared PID namespace)."""
        if self.tag:
            for pid in tagged(self.tag):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def kill_processes(self, sig: int = signal.SIGKILL) -> int:
        """Kill every process inside the container but the namespace itself (a test's fault injection:
        "the pod's processes die"); PID 1 dying ends the container. Returns how many were signalled."""
        init = self.init_pid()
        if init is None:
            return 0
        victims = set(tagged(self.tag)) if self.tag else set()
        victims.add(init)
        stack = [init]
        while stack:
            for child in _children(stack.pop()):
                victims.add(child)
                stack.append(child)
        for pid in sorted(victims, reverse=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(victims)
