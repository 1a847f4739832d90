"""A bounded open-loop load: Poisson arrivals with mixed prompt and output lengths, over real HTTP.

`poisson_schedule` is pure (seeded): when each request arrives and what it asks for. `drive` plays
the schedule against an OpenAI-compatible server with streaming completions (open loop);
`drive_closed` keeps a fixed number of requests in flight instead (benchmarks). Each request is
measured as a client sees it: TTFT (send -> first text), ITL (mean gap between tokens after the
first) and the token counts from the server's usage chunk.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp


async def sse_events(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of an OpenAI-style SSE stream (`data: {...}` lines), up to `data: [DONE]`."""
    async for raw in content:
        line = raw.strip()
        if line == b"data: [DONE]":
            return
        if line.startswith(b"data: "):
            yield json.loads(line[6:])


@dataclass(frozen=True)
class LoadSpec:
    num_requests: int = 48
    rate_per_s: float = 1.5
    prompt_tokens: tuple[int, ...] = (32, 128, 384)
    prompt_weights: tuple[float, ...] = (0.5, 0.35, 0.15)
    output_tokens: tuple[int, ...] = (16, 32, 64)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_requests < 1 or self.rate_per_s <= 0:
            raise ValueError(
                f"num_requests ({self.num_requests}) must be >= 1 and rate_per_s ({self.rate_per_s}) > 0"
            )
        if len(self.prompt_tokens) != len(self.prompt_weights) or not self.prompt_tokens:
            raise ValueError(
                f"prompt_tokens {self.prompt_tokens} and prompt_weights {self.prompt_weights} must pair up"
            )
        if min(self.prompt_tokens) < 1 or not self.output_tokens or min(self.output_tokens) < 1:
            raise ValueError("prompt and output lengths must be >= 1")


@dataclass(frozen=True)
class Arrival:
    at_s: float  # offset from the start of the run
    prompt: str
    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class Result:
    arrival: Arrival
    ok: bool
    error: str = ""
    ttft_ms: float | None = None
    itl_ms: float | None = None  # mean gap per token after the first
    e2e_ms: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0


def _words(rng: random.Random, num_chars: int) -> str:
    """ASCII text of exactly `num_chars` bytes (one byte-level token each)."""
    out: list[str] = []
    size = 0
    while size < num_chars:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) + " "
        out.append(word)
        size += len(word)
    return "".join(out)[:num_chars]


def poisson_schedule(spec: LoadSpec) -> list[Arrival]:
    """Exponential inter-arrival times at `rate_per_s`; lengths drawn with the given weights."""
    rng = random.Random(spec.seed)
    t = 0.0
    arrivals = []
    for _ in range(spec.num_requests):
        t += rng.expovariate(spec.rate_per_s)
        n = rng.choices(spec.prompt_tokens, weights=spec.prompt_weights)[0]
        # The server adds BOS: n - 1 characters make an n-token prompt.
        arrivals.append(Arrival(t, _words(rng, max(1, n - 1)), n, rng.choice(spec.output_tokens)))
    return arrivals


async def one_request(http: aiohttp.ClientSession, url: str, model: str, a: Arrival) -> Result:
    body = {
        "model": model, "prompt": a.prompt, "max_tokens": a.max_tokens, "temperature": 0.8,
        "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
    }
    start = time.monotonic()
    first = last = None
    usage: dict[str, int] = {}
    try:
        async with http.post(url + "/v1/completions", json=body) as resp:
            if resp.status != 200:
                err = (await resp.json()).get("error", {})
                return Result(a, False, f"HTTP {resp.status}: {err.get('message', '')}",
                              e2e_ms=(time.monotonic() - start) * 1e3)
            async for event in sse_events(resp.content):
                if "error" in event:
                    return Result(a, False, event["error"].get("message", "error event"),
                                  e2e_ms=(time.monotonic() - start) * 1e3)
                if event.get("usage"):
                    usage = event["usage"]
                elif event["choices"] and event["choices"][0]["text"]:
                    last = time.monotonic()
                    first = first or last
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(a, False, f"{type(exc).__name__}: {exc}", e2e_ms=(time.monotonic() - start) * 1e3)
    end = time.monotonic()
    n_out = usage.get("completion_tokens", 0)
    itl = None
    if first is not None and last is not None and n_out > 1:
        itl = (last - first) / (n_out - 1) * 1e3
    return Result(
        a, True, ttft_ms=None if first is None else (first - start) * 1e3, itl_ms=itl,
        e2e_ms=(end - start) * 1e3, prompt_tokens=usage.get("prompt_tokens", 0), output_tokens=n_out,
    )


async def drive(
    url: str, model: str, arrivals: Sequence[Arrival], on_done: Callable[[Result], None] = lambda _: None,
    timeout_s: float = 600.0,
) -> tuple[list[Result], float]:
    """Send each arrival at its time (open loop: late responses never delay later arrivals).

    Returns the results in arrival order and the wall time of the whole run in seconds.
    """
    connector = aiohttp.TCPConnector(limit=0)  # open loop: no client-side queueing
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        t0 = time.monotonic()

        async def at(a: Arrival) -> Result:
            await asyncio.sleep(max(0.0, t0 + a.at_s - time.monotonic()))
            result = await one_request(http, url, model, a)
            on_done(result)
            return result

        results = await asyncio.gather(*(at(a) for a in arrivals))
        return list(results), time.monotonic() - t0


async def drive_closed(
    url: str, model: str, arrivals: Sequence[Arrival], concurrency: int,
    on_done: Callable[[Result], None] = lambda _: None, timeout_s: float = 600.0,
) -> tuple[list[Result], float]:
    """Closed loop: `concurrency` clients, each sending its next request when the last one ends
    (arrival times are ignored). Returns the results in arrival order and the wall time."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    queue: asyncio.Queue[tuple[int, Arrival]] = asyncio.Queue()
    for item in enumerate(arrivals):
        queue.put_nowait(item)
    results: list[Result | None] = [None] * len(arrivals)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def client() -> None:
            while not queue.empty():
                i, a = queue.get_nowait()
                results[i] = r = await one_request(http, url, model, a)
                on_done(r)

        t0 = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall_s = time.monotonic() - t0
    return [r for r in results if r is not None], wall_s
