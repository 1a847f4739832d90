"""Waiting for the pod's Ray head: `moeplane pool` runs in a sidecar that can start before the head.

`connect_with_backoff` is the pure retry loop (the clock, sleep and connect function are
injected); `ray_connector` is the real connect function it retries in `moeplane pool`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

Progress = Callable[[str], None]


class ConnectTimeout(ConnectionError):
    """The peer did not come up before the deadline; the message says what was awaited, for how
    long, over how many attempts, and the last error."""


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: `first_s`, then doubling up to `max_s`, all within `timeout_s`."""

    timeout_s: float
    first_s: float = 0.5
    max_s: float = 8.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {self.timeout_s}")
        if not 0 < self.first_s <= self.max_s:
            raise ValueError(f"need 0 < first_s ({self.first_s}) <= max_s ({self.max_s})")
        if not self.factor >= 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")

    def delay_s(self, attempt: int) -> float:
        """The pause after failed attempt number `attempt` (1-based)."""
        return min(self.max_s, self.first_s * self.factor ** (attempt - 1))


def connect_with_backoff(
    connect: Callable[[], T],
    what: str,
    backoff: Backoff,
    progress: Progress = lambda _: None,
    retry_on: tuple[type[BaseException], ...] = (OSError,),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`connect()`'s result, retrying errors of `retry_on` until `backoff.timeout_s` has passed.

    Any other exception is not a peer still starting, and propagates at once. The last pause is
    cut short at the deadline, so the loop ends at most one attempt past it.

    Raises:
        ConnectTimeout: every attempt failed and the deadline passed.
    """
    start = clock()
    deadline = start + backoff.timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return connect()
        except retry_on as exc:
            last = f"{type(exc).__name__}: {exc}"
        now = clock()
        if now >= deadline:
            raise ConnectTimeout(
                f"{what} did not come up within {backoff.timeout_s:g} s ({attempt} attempts; last error: "
                f"{last})"
            )
        pause = min(backoff.delay_s(attempt), deadline - now)
        progress(
            f"waiting for {what} ({last}); attempt {attempt + 1} in {pause:.1f} s, "
            f"{deadline - now:.0f} s left"
        )
        sleep(pause)


def _tcp_target(address: str) -> tuple[str, int] | None:
    """(host, port) of an explicit `HOST:PORT` Ray address; None for `auto` and `ray://`."""
    if address in ("", "auto", "local") or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def ray_connector(address: str, probe_timeout_s: float = 2.0) -> Callable[[], None]:
    """The connect function of `moeplane pool`: join the Ray cluster at `address`.

    `ray.init` at an explicit address that nothing listens on blocks in its own long retries, so
    such an address is first probed with a TCP connect (an OSError while the head is down).
    With `auto`, `ray.init` raises ConnectionError at once until the head has written its
    address under /tmp/ray, which the sidecar shares with the head.
    """

    def connect() -> None:
        import ray

        target = _tcp_target(address)
        if target is not None:
            socket.create_connection(target, timeout=probe_timeout_s).close()
        try:
            # The pod's own Ray head; the driver's logs stay in this process's output.
            ray.init(address=address, log_to_driver=True, configure_logging=False)
        except BaseException:
            if ray.is_initialized():  # a half-made connection must not block the next attempt
                ray.shutdown()
            raise

    return connect
