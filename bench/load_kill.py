"""Kill a rank under load and time the recovery (part of bench/load.py; see its docstring).

A steady closed loop (`concurrency` clients, short streaming completions) runs while one rank of
`{role}-0` is killed with SIGKILL. Measured from the kill, on the monotonic clock:
- detect_s: the group's supervisor marks it down (restarting);
- restored_s: the first request sent after the kill completes successfully (user-visible service);
- full_s: the group is live again with one more restart, so every group of the stack is live.
Every request of the window is counted; any that did not succeed is a failure.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

RequestFn = Callable[[aiohttp.ClientSession, str, str, str, int], Awaitable[Any]]


@dataclass
class KillResult:
    role: str
    spares: bool
    detect_s: float | None = None
    restored_s: float | None = None
    full_s: float | None = None
    requests: int = 0
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role, "spares": self.spares, "detect_s": self.detect_s,
            "restored_s": self.restored_s, "full_s": self.full_s, "requests": self.requests,
            "failed": len(self.failed), "failed_sample": self.failed[:5],
        }


async def measure_kill(
    stack: Any, role: str, spares: bool, one_request: RequestFn, concurrency: int = 4,
    timeout_s: float = 180.0,
) -> KillResult:
    """Kill rank 1 of `{role}-0` under load; with or without spare rank actors ready."""
    from moeplane.api.enums import Role

    from moeplane.bus.registry import GroupState

    supervisor = stack.supervisors[Role(role)]
    group = stack.group(f"{role}-0")
    ep_size = group.spec.ep_size
    await supervisor.set_spare_ranks(ep_size if spares else 0)
    deadline = time.monotonic() + timeout_s
    while spares and supervisor.num_spares_ready < ep_size:
        assert time.monotonic() < deadline, "the spare rank actors did not start"
        await asyncio.sleep(0.1)
    result = KillResult(role, spares)
    restarts = group.restarts
    killed_at: float | None = None
    stop = asyncio.Event()

    async def client(c: int) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
            i = 0
            while not stop.is_set():
                sent = time.monotonic()
                outcome = await one_request(http, stack.url, "tiny", f"client {c} request {i}", 16)
                i += 1
                if killed_at is None:
                    continue  # before the kill: warm-up, not counted
                result.requests += 1
                if not outcome.ok:
                    result.failed.append(f"HTTP {outcome.status} {outcome.error[:120]}")
                elif sent > killed_at and result.restored_s is None:
                    result.restored_s = time.monotonic() - killed_at

    clients = [asyncio.create_task(client(c)) for c in range(concurrency)]
    await asyncio.sleep(1.0)  # the load is flowing
    pid = group.controller.identities[1].pid
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while result.full_s is None or result.restored_s is None:
        now = time.monotonic()
        assert now < deadline, f"{role}-0 not back within {timeout_s:g} s: {group.state} {group.message}"
        if result.detect_s is None and group.state is not GroupState.LIVE:
            result.detect_s = now - killed_at
        if result.full_s is None and group.state is GroupState.LIVE and group.restarts > restarts:
            result.full_s = now - killed_at
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.gather(*clients)
    return result
