"""Load, overload and rank kills on the embedded stack (`moeplane up`'s topology: one prefill and one
decode group, EP2 each): `python bench/load.py [--quick] [--json OUT]`.

1. load: closed loop, `concurrency` clients each send their next streaming completion when the last
   one ends (short prompts, `max_tokens` 4, `ignore_eos`), 2,000 requests at concurrency 64 in the
   full run; the baseline for the ratios is the same requests at concurrency 1 (a tenth as many).
2. overload (the issue's): 96 requests of 128 prompt and 256 output tokens at concurrency 64, more
   KV than the decode group holds: requests wait in the frontend's queue and decode preempts.
   Reported: failures (target 0), the queue wait p50/p99 (the frontend's admission queue, and
   arrival to the start of prefill, from the request-metrics stream), preemptions.
3. kills (`load_kill.py`): kill -9 of a decode rank, then of a prefill rank, under a steady load,
   with spare rank actors (the default) and, as the baseline, without (fresh processes): time to
   detection, to service restored (the first request sent after the kill that succeeds) and to
   full strength (every group live again); targets 5 s and 30 s; failed requests (target 0).

Checked, and printed with the measurements: every answer is 200 (503 with Retry-After only past the
queue); no KV block is held on any rank afterwards; the RSS of each process (this one, which runs
the frontend; each rank actor; redis-server) grows by less than 10% between the end of the second
quarter of the load run and its end. JSON: `runs`, `overload`, `kills`, `rss_kb`, `checks`.

The test tier (tests/reliability/test_stack_faults.py, test_group_faults.py) imports this file's
`run_load` and runs bounded versions that check the same properties.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from moeplane.workers.embedded.loadgen import sse_events

RSS_GROWTH_LIMIT = 0.10


@dataclass(frozen=True)
class Outcome:
    status: int  # HTTP status; 0 for a transport error
    ok: bool
    retry_after_s: int | None = None
    error: str = ""
    e2e_ms: float = 0.0
    ttft_ms: float | None = None
    output_tokens: int = 0
    request_id: str = ""


@dataclass
class LoadRun:
    label: str
    requests: int
    concurrency: int
    wall_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    rss_kb: dict[str, list[int]] = field(default_factory=dict)  # process -> samples at 0, 1/4 .. 4/4

    @property
    def ok(self) -> int:
        return sum(o.ok for o in self.outcomes)

    @property
    def shed(self) -> list[Outcome]:
        """503s: over capacity, which is allowed when they carry Retry-After."""
        return [o for o in self.outcomes if o.status == 503]

    @property
    def errors(self) -> list[Outcome]:
        """Anything other than success or a 503 with Retry-After."""
        return [
            o
            for o in self.outcomes
            if not o.ok and not (o.status == 503 and o.retry_after_s is not None and o.retry_after_s >= 1)
        ]

    def summary(self) -> dict[str, float]:
        e2e = np.array([o.e2e_ms for o in self.outcomes if o.ok] or [0.0])
        ttft = np.array([o.ttft_ms for o in self.outcomes if o.ok and o.ttft_ms is not None] or [0.0])
        return {
            "requests_per_s": self.ok / self.wall_s if self.wall_s else 0.0,
            "output_tokens_per_s": sum(o.output_tokens for o in self.outcomes) / self.wall_s
            if self.wall_s
            else 0.0,
            "e2e_p50_ms": float(np.percentile(e2e, 50)),
            "e2e_p90_ms": float(np.percentile(e2e, 90)),
            "e2e_p99_ms": float(np.percentile(e2e, 99)),
            "ttft_p50_ms": float(np.percentile(ttft, 50)),
            "ttft_p99_ms": float(np.percentile(ttft, 99)),
        }

    def rss_growth(self) -> dict[str, float]:
        """Per process, growth from the end of the second quarter to the end (0.05 = 5%)."""
        return {name: (s[-1] - s[2]) / s[2] for name, s in self.rss_kb.items() if len(s) == 5 and s[2] > 0}


def rss_kb(pid: int) -> int:
    """Resident set size of `pid` from /proc, in KiB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_rank_pids(stack: Any) -> dict[str, int]:
    """The processes of the serving groups' rank actors (an `EmbeddedStack`'s), by a stable name."""
    return {
        f"{g.group_id}/rank{r}": ident.pid
        for g in stack.groups
        for r, ident in enumerate(g.controller.identities)
    }


async def one_request(
    http: aiohttp.ClientSession, url: str, model: str, prompt: str, max_tokens: int
) -> Outcome:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    start = time.monotonic()
    first = None
    tokens = 0
    try:
        async with http.post(url + "/v1/completions", json=body) as resp:
            rid = resp.headers.get("X-Request-Id", "")
            if resp.status != 200:
                retry = resp.headers.get("Retry-After")
                text = await resp.text()
                return Outcome(
                    resp.status,
                    False,
                    int(retry) if retry and retry.isdigit() else None,
                    text[:300],
                    (time.monotonic() - start) * 1e3,
                )
            async for event in sse_events(resp.content):
                if "error" in event:
                    return Outcome(
                        200, False, None, str(event["error"])[:300], (time.monotonic() - start) * 1e3
                    )
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                elif event["choices"] and first is None:
                    first = time.monotonic()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Outcome(0, False, None, f"{type(exc).__name__}: {exc}", (time.monotonic() - start) * 1e3)
    end = time.monotonic()
    return Outcome(
        200,
        tokens == max_tokens,
        None,
        "" if tokens == max_tokens else f"{tokens} tokens",
        (end - start) * 1e3,
        None if first is None else (first - start) * 1e3,
        tokens,
        rid,
    )


async def run_load(
    url: str,
    model: str,
    requests: int,
    concurrency: int,
    max_tokens: int,
    pids: dict[str, int],
    label: str = "load",
    progress: Callable[[int, int], None] = lambda d, n: None,
    prompt: str | None = None,
    timeout_s: float = 300.0,
) -> LoadRun:
    """`requests` completions from `concurrency` closed-loop clients (each its own short prompt, or
    `prompt` for all), each given up after `timeout_s`; RSS of `pids` sampled at the start and after
    each quarter of the requests."""
    marks = {requests * q // 4 for q in (1, 2, 3)}
    run = LoadRun(label, requests, concurrency, 0.0, rss_kb={n: [rss_kb(p)] for n, p in pids.items()})
    next_index = 0
    done = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as http:

        async def client(c: int) -> None:
            nonlocal next_index, done
            while next_index < requests:
                i = next_index
                next_index += 1
                text = prompt if prompt is not None else f"request {i} from client {c}: " + "moe " * (i % 7)
                run.outcomes.append(await one_request(http, url, model, text, max_tokens))
                done += 1
                progress(done, requests)
                if done in marks:
                    for name, pid in pids.items():
                        run.rss_kb[name].append(rss_kb(pid))

        t0 = time.monotonic()
        await asyncio.gather(*(client(c) for c in range(concurrency)))
        run.wall_s = time.monotonic() - t0
    for name, pid in pids.items():
        run.rss_kb[name].append(rss_kb(pid))
    return run


async def used_blocks(addresses: Sequence[str], security: object | None = None) -> dict[str, list[int]]:
    """Per group address, the KV blocks in use on each rank."""
    from moeplane.workers.serving.client import WorkerControlClient

    out = {}
    for address in addresses:
        client = (
            WorkerControlClient(address, security) if security is not None else WorkerControlClient(address)
        )
        try:
            out[address] = [r.num_used_blocks for r in (await client.stats()).ranks]
        finally:
            await client.close()
    return out


async def wait_no_blocks(
    addresses: Sequence[str], security: object | None = None, timeout_s: float = 15.0
) -> dict[str, list[int]]:
    deadline = time.monotonic() + timeout_s
    while True:
        used = await used_blocks(addresses, security)
        if not any(any(u) for u in used.values()) or time.monotonic() > deadline:
            return used
        await asyncio.sleep(0.2)


def _bar(done: int, total: int) -> None:
    if done == total or done % max(1, total // 20) == 0:
        print(f"\r  {done}/{total} requests", end="\n" if done == total else "", file=sys.stderr, flush=True)


async def queue_waits(stack: Any, outcomes: Sequence[Outcome]) -> dict[str, float]:
    """p50/p99 of the admission-queue wait and of arrival-to-prefill, from the request-metrics stream."""
    from moeplane.bus.request_metrics import read_request_records

    assert stack.frontend is not None
    await stack.frontend.writer.flush()
    records, _ = await read_request_records(stack.frontend.redis, stack.plan.keys, count=100_000)
    ids = {o.request_id for o in outcomes}
    mine = [r for r in records if r.request_id in ids]
    admission = np.array([r.admission_queue_ms or 0.0 for r in mine] or [0.0])
    queue = np.array([r.queue_ms or 0.0 for r in mine] or [0.0])
    return {
        "records": len(mine),
        "admission_queue_p50_ms": float(np.percentile(admission, 50)),
        "admission_queue_p99_ms": float(np.percentile(admission, 99)),
        "queue_p50_ms": float(np.percentile(queue, 50)),
        "queue_p99_ms": float(np.percentile(queue, 99)),
    }


async def preemptions(stack: Any) -> int:
    """Sequences preempted on every rank of every group since it started (their Stats)."""
    from moeplane.workers.serving.client import WorkerControlClient

    total = 0
    for g in stack.groups:
        client = WorkerControlClient(g.address, stack.security)
        try:
            total += sum(r.num_preemptions for r in (await client.stats()).ranks)
        finally:
            await client.close()
    return total


async def _main(quick: bool) -> dict:
    import importlib.util

    import ray
    from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest, plan_from_deployment
    from moeplane.workers.embedded.stack import EmbeddedStack, StackOptions

    path = Path(__file__).parent / "load_kill.py"
    spec = importlib.util.spec_from_file_location("moeplane_bench_load_kill", path)
    assert spec is not None and spec.loader is not None
    kill = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = kill
    spec.loader.exec_module(kill)

    requests, concurrency = (400, 64) if quick else (2000, 64)
    plan = plan_from_deployment(load_manifest(DEFAULT_MANIFEST), max_model_len=512)
    stack = EmbeddedStack(plan, StackOptions(port=0, ray_num_cpus=4))
    print("starting the embedded stack ...", file=sys.stderr)
    await stack.start(lambda m: print(f"  {m}", file=sys.stderr))
    try:
        assert stack.redis is not None and stack.redis._proc is not None
        pids = {"frontend": os.getpid(), "redis": stack.redis._proc.pid, **group_rank_pids(stack)}
        print(f"baseline: {requests // 10} requests at concurrency 1", file=sys.stderr)
        base = await run_load(stack.url, plan.served_model, requests // 10, 1, 4, {}, "baseline", _bar)
        print(f"load: {requests} requests at concurrency {concurrency}", file=sys.stderr)
        load = await run_load(stack.url, plan.served_model, requests, concurrency, 4, pids, "load", _bar)
        print("overload: 96 requests of 128 + 256 tokens at concurrency 64", file=sys.stderr)
        preempted_before = await preemptions(stack)
        prompt = "x" * 127  # + BOS: 128 tokens
        over = await run_load(stack.url, plan.served_model, 96, 64, 256, {}, "overload", _bar, prompt=prompt)
        waits = await queue_waits(stack, over.outcomes)
        preempted = await preemptions(stack) - preempted_before
        kills = []
        for role in ("decode", "prefill"):
            for spares in (False, True):
                how = "with" if spares else "without"
                print(f"kill -9 of a {role} rank, {how} spare ranks", file=sys.stderr)
                kills.append(await kill.measure_kill(stack, role, spares, one_request))
        leaked = await wait_no_blocks([g.address for g in stack.groups], stack.security)
    finally:
        await stack.stop()
        if ray.is_initialized():
            ray.shutdown()
    return report(base, load, over, waits, preempted, kills, leaked)


def report(
    base: LoadRun, load: LoadRun, over: LoadRun, waits: dict[str, float], preempted: int, kills: list[Any],
    leaked: dict[str, list[int]],
) -> dict:
    growth = load.rss_growth()
    with_spares = [k for k in kills if k.spares]
    checks = {
        "no_errors_but_503_retry_after": not load.errors,
        "overload_no_failed_requests": over.ok == over.requests,
        "kill_restored_within_5s": all(k.restored_s is not None and k.restored_s <= 5.0 for k in with_spares),
        "kill_full_strength_within_30s": all(k.full_s is not None and k.full_s <= 30.0 for k in kills),
        "kill_no_failed_requests": all(not k.failed for k in kills),
        "no_leaked_kv_blocks": not any(any(u) for u in leaked.values()),
        "rss_growth_under_10pct": all(g < RSS_GROWTH_LIMIT for g in growth.values()),
    }
    b, s, o = base.summary(), load.summary(), over.summary()
    print(
        f"\n{'run':<10}{'requests':>9}{'ok':>7}{'503':>6}{'errors':>8}{'req/s':>9}{'e2e p50':>10}"
        f"{'e2e p90':>10}{'e2e p99':>10}{'ttft p50':>10}"
    )
    for run, m in ((base, b), (load, s), (over, o)):
        print(
            f"{run.label:<10}{run.requests:>9}{run.ok:>7}{len(run.shed):>6}{len(run.errors):>8}"
            f"{m['requests_per_s']:>9.1f}{m['e2e_p50_ms']:>10.0f}{m['e2e_p90_ms']:>10.0f}"
            f"{m['e2e_p99_ms']:>10.0f}{m['ttft_p50_ms']:>10.0f}"
        )
    print(
        f"ratio load/baseline: req/s x{s['requests_per_s'] / max(b['requests_per_s'], 1e-9):.2f}, "
        f"e2e p50 x{s['e2e_p50_ms'] / max(b['e2e_p50_ms'], 1e-9):.2f}"
    )
    print(
        f"overload: {over.ok}/{over.requests} ok, {len(over.outcomes) - over.ok} failed; admission queue "
        f"wait p50 {waits['admission_queue_p50_ms']:.0f} ms, p99 {waits['admission_queue_p99_ms']:.0f} ms; "
        f"arrival to prefill p50 {waits['queue_p50_ms']:.0f} ms, p99 {waits['queue_p99_ms']:.0f} ms; "
        f"{preempted} preemptions; {o['output_tokens_per_s']:.0f} output tokens/s"
    )
    print(
        f"\n{'kill -9':<10}{'spares':>8}{'detect s':>10}{'restored s':>12}{'full s':>8}{'requests':>10}"
        f"{'failed':>8}"
    )
    for k in kills:
        print(
            f"{k.role:<10}{'yes' if k.spares else 'no':>8}{_num(k.detect_s):>10}{_num(k.restored_s):>12}"
            f"{_num(k.full_s):>8}{k.requests:>10}{len(k.failed):>8}"
        )
    print(
        "RSS growth, 2nd quarter -> end: "
        + ", ".join(f"{n} {g * 100:+.1f}%" for n, g in sorted(growth.items()))
    )
    print("checks: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in checks.items()))
    for e in [*load.errors[:5], *[x for x in over.outcomes if not x.ok][:5]]:
        print(f"  error: HTTP {e.status} {e.error}")
    return {
        "runs": [
            {
                "label": r.label, "requests": r.requests, "concurrency": r.concurrency, "ok": r.ok,
                "shed_503": len(r.shed), "errors": len(r.errors), "wall_s": r.wall_s, **r.summary(),
            }
            for r in (base, load, over)
        ],
        "ratios": {
            "requests_per_s": s["requests_per_s"] / max(b["requests_per_s"], 1e-9),
            "e2e_p50": s["e2e_p50_ms"] / max(b["e2e_p50_ms"], 1e-9),
        },
        "overload": {"failed": over.requests - over.ok, "preemptions": preempted, **waits},
        "kills": [k.as_dict() for k in kills],
        "rss_kb": load.rss_kb,
        "rss_growth": growth,
        "leaked_blocks": leaked,
        "checks": checks,
        "errors_sample": [asdict(o) for o in load.errors[:20]],
    }


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 requests instead of 2,000")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    out = asyncio.run(_main(args.quick))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if all(out["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
