"""Container probes as the kubelet runs them (pkg/kubelet/prober): httpGet, tcpSocket and exec, with
initialDelaySeconds, periodSeconds, timeoutSeconds and the success/failure thresholds.

httpGet and tcpSocket dial the pod's address from outside the pod, as the kubelet does; exec runs the
command inside the container's namespaces (`nsenter` into its PID 1) with the container's environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True)
class ProbeSpec:
    action: Mapping[str, Any]
    initial_delay_s: float = 0.0
    period_s: float = 10.0
    timeout_s: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_k8s(cls, probe: Mapping[str, Any]) -> ProbeSpec:
        action = {k: v for k, v in probe.items() if k in ("httpGet", "tcpSocket", "exec", "grpc")}
        return cls(
            action=action,
            initial_delay_s=float(probe.get("initialDelaySeconds") or 0),
            period_s=float(probe.get("periodSeconds") or 10),
            timeout_s=float(probe.get("timeoutSeconds") or 1),
            success_threshold=int(probe.get("successThreshold") or 1),
            failure_threshold=int(probe.get("failureThreshold") or 3),
        )


def resolve_port(port: Any, container: Mapping[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports") or ():
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"the container has no port named {port!r}")


@dataclass
class ProbeContext:
    pod_ip: str
    container: Mapping[str, Any]
    env: Mapping[str, str]
    init_pid: Callable[[], int | None]


async def run_once(spec: ProbeSpec, ctx: ProbeContext) -> tuple[bool, str]:
    """One probe: (success, message)."""
    action = spec.action
    try:
        if "httpGet" in action:
            get = action["httpGet"]
            port = resolve_port(get.get("port"), ctx.container)
            host = get.get("host") or ctx.pod_ip
            scheme = str(get.get("scheme") or "HTTP").lower()
            url = f"{scheme}://{host}:{port}{get.get('path') or '/'}"
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or ()}
            timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, headers=headers, ssl=False, allow_redirects=False) as resp,
            ):
                ok = 200 <= resp.status < 400
                return ok, f"HTTP probe failed with statuscode: {resp.status}" if not ok else ""
        if "tcpSocket" in action:
            sock = action["tcpSocket"]
            port = resolve_port(sock.get("port"), ctx.container)
            host = sock.get("host") or ctx.pod_ip
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), spec.timeout_s)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return True, ""
        if "exec" in action:
            return await _exec(list(action["exec"].get("command") or []), spec.timeout_s, ctx)
        return False, f"probe {sorted(action)} is not played by the runner"
    except TimeoutError:
        return False, f"probe timed out after {spec.timeout_s:g}s"
    except (OSError, aiohttp.ClientError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"


async def _exec(command: Sequence[str], timeout_s: float, ctx: ProbeContext) -> tuple[bool, str]:
    init = ctx.init_pid()
    if init is None:
        return False, "the container is not running"
    argv = ["nsenter", "-t", str(init), "-p", "-m", "-u", "--", *command]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(ctx.env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False, f"command timed out after {timeout_s:g}s"
    text = out.decode(errors="replace").strip()[-300:]
    return proc.returncode == 0, "" if proc.returncode == 0 else f"exit {proc.returncode}: {text}"


@dataclass
class ProbeState:
    """The result the kubelet keeps per probe: flips after `threshold` consecutive outcomes."""

    spec: ProbeSpec
    initial: bool
    result: bool = field(init=False)
    message: str = ""
    successes: int = 0
    failures: int = 0
    last_run: float = 0.0

    def __post_init__(self) -> None:
        self.result = self.initial

    def record(self, ok: bool, message: str) -> bool:
        """Record one outcome; True when the result changed."""
        self.last_run = time.monotonic()
        before = self.result
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.spec.success_threshold:
                self.result = True
                self.message = ""
        else:
            self.failures += 1
            self.successes = 0
            self.message = message
            if self.failures >= self.spec.failure_threshold:
                self.result = False
        return self.result != before
