"""An offline stand-in for `aiperf profile --endpoint-type chat --streaming`, against any
OpenAI-compatible server: `python bench/aiperf_chat.py --url URL --model NAME [--json OUT]`.

It sends what aiperf sends for chat: one user message of synthetic words, `max_completion_tokens`,
`stream: true` with `stream_options: {"include_usage": true}`, plus aiperf's usual
`--extra-inputs ignore_eos:true min_tokens:<osl>` so every reply has the requested length, and
the `Authorization: Bearer` header with `--api-key`. It parses the SSE stream as aiperf does:
TTFT is the first chunk with content, ITL the gaps between content chunks, and the token counts
come from the final usage chunk (aiperf would otherwise count them with a tokenizer, which is
what it downloads; see README on pointing the real aiperf at a local tokenizer directory).

Closed loop: `--concurrency` clients, each sending its next request when the last one ends. The
JSON report lists every request and the aggregate: requests, errors, TTFT/ITL p50/p90/p99 in ms,
output tokens/s, and how many streams broke the protocol (no role chunk first, no usage chunk,
usage that disagrees with `max_completion_tokens`, a missing `[DONE]`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


@dataclass
class RequestReport:
    index: int
    ok: bool = False
    error: str = ""
    ttft_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    content_chunks: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    role_first: bool = False
    usage_chunk: bool = False
    done: bool = False
    finish_reason: str | None = None
    text: str = ""


def synthetic_prompt(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def payload(model: str, prompt: str, osl: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_completion_tokens": osl,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "min_tokens": osl,
    }


async def one_request(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str],
    report: RequestReport,
) -> None:
    start = time.perf_counter()
    last: float | None = None
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
            if resp.status != 200:
                report.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            first_event = True
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    report.done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    report.error = str(event["error"].get("message"))
                    return
                if event.get("usage") and not event.get("choices"):
                    report.usage_chunk = True
                    report.prompt_tokens = event["usage"]["prompt_tokens"]
                    report.completion_tokens = event["usage"]["completion_tokens"]
                    continue
                choice = event["choices"][0]
                delta = choice.get("delta") or {}
                if first_event:
                    report.role_first = delta.get("role") == "assistant"
                    first_event = False
                if delta.get("content"):
                    now = time.perf_counter()
                    if report.ttft_ms is None:
                        report.ttft_ms = (now - start) * 1e3
                    elif last is not None:
                        report.itl_ms.append((now - last) * 1e3)
                    last = now
                    report.content_chunks += 1
                    report.text += delta["content"]
                if choice.get("finish_reason"):
                    report.finish_reason = choice["finish_reason"]
        report.ok = report.done and not report.error
    except aiohttp.ClientError as exc:
        report.error = f"{type(exc).__name__}: {exc}"


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}


async def run(
    url: str, model: str, requests: int, concurrency: int, isl_words: int, osl: int, api_key: str | None,
    seed: int = 0, timeout_s: float = 300.0,
) -> dict[str, Any]:
    rng = random.Random(seed)
    bodies = [payload(model, synthetic_prompt(rng, isl_words), osl) for _ in range(requests)]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    reports = [RequestReport(i) for i in range(requests)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    start = time.perf_counter()
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                await one_request(session, url.rstrip("/"), bodies[i], headers, reports[i])

        await asyncio.gather(*(client() for _ in range(max(1, concurrency))))
    wall_s = time.perf_counter() - start
    ok = [r for r in reports if r.ok]
    out_tokens = sum(r.completion_tokens or 0 for r in ok)
    return {
        "url": url,
        "model": model,
        "requests": requests,
        "concurrency": concurrency,
        "ok": len(ok),
        "errors": [r.error for r in reports if not r.ok],
        "ttft_ms": percentiles([r.ttft_ms for r in ok if r.ttft_ms is not None]),
        "itl_ms": percentiles([g for r in ok for g in r.itl_ms]),
        "output_tokens": out_tokens,
        "output_tokens_per_s": round(out_tokens / wall_s, 3) if wall_s > 0 else None,
        "wall_s": round(wall_s, 3),
        "protocol": {
            "missing_role_chunk": sum(not r.role_first for r in ok),
            "missing_usage_chunk": sum(not r.usage_chunk for r in ok),
            "usage_mismatch": sum(r.completion_tokens != osl for r in ok),
            "missing_finish_reason": sum(r.finish_reason is None for r in ok),
            "missing_done": sum(not r.done for r in reports if not r.error),
        },
        "per_request": [asdict(r) | {"text": r.text[:80]} for r in reports],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--model", required=True)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--isl-words", type=int, default=32, help="synthetic prompt length in words")
    ap.add_argument("--osl", type=int, default=16, help="output tokens per request")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="OUT", default=None, help="write the report here too")
    args = ap.parse_args(argv)
    report = asyncio.run(
        run(args.url, args.model, args.requests, args.concurrency, args.isl_words, args.osl, args.api_key,
            args.seed)
    )
    text = json.dumps(report, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    summary = {k: v for k, v in report.items() if k != "per_request"}
    print(json.dumps(summary, indent=2))
    return 0 if report["ok"] == report["requests"] and not any(report["protocol"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
