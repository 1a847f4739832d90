"""Waiting for events in tests: poll a condition until it holds, with a generous bound.

Tests wait for what happens, not for a duration (a busy machine is slow), so every wait is
`await until(check, what, timeout_s)`: the bound only turns a hang into a failure that says what
never happened.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

Check = Callable[[], bool] | Callable[[], Awaitable[bool]]


async def until(check: Check, what: str, timeout_s: float, poll_s: float = 0.05) -> None:
    """Poll `check` (plain or async) every `poll_s` until it is true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = check()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        await asyncio.sleep(poll_s)
