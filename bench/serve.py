"""End-to-end serving benchmark on the CPU: `python bench/serve.py [--quick] [--json OUT]`.

The real embedded stack (frontend -> router -> serving groups of Ray rank actors, tiny model)
is measured over HTTP with streaming completions at several concurrencies (closed loop: each
client sends its next request when the last one ends), with fixed prompt and output lengths
(`ignore_eos`). Two layouts on the same number of ranks, both measured in this run:

- disaggregated: 1 prefill group EP2 + 1 decode group EP2 (KV moves over gRPC);
- aggregated (the baseline): 2 decode groups EP2 that compute their own prompts.

Per layout and concurrency: output tokens/s, TTFT p50/p90 and ITL p50/p90 (per-request mean gap
between tokens), and the disaggregated/aggregated ratios. JSON: `rows` (one per layout and
concurrency) and `ratios` (one per concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray
from moeplane.workers.embedded.loadgen import Arrival, LoadSpec, Result, drive_closed, poisson_schedule
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest, plan_from_deployment
from moeplane.workers.embedded.stack import EmbeddedStack, StackOptions


@dataclass(frozen=True)
class Setting:
    concurrencies: tuple[int, ...]
    requests_per_client: int
    min_requests: int
    prompt_tokens: int
    output_tokens: int


QUICK = Setting(concurrencies=(1, 8), requests_per_client=2, min_requests=6, prompt_tokens=64,
                output_tokens=32)
FULL = Setting(concurrencies=(1, 4, 16), requests_per_client=3, min_requests=8, prompt_tokens=128,
               output_tokens=64)


@dataclass(frozen=True)
class Row:
    mode: str
    concurrency: int
    requests: int
    errors: int
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    itl_p50_ms: float
    itl_p90_ms: float
    wall_s: float


def arrivals(setting: Setting, n: int, seed: int) -> list[Arrival]:
    spec = LoadSpec(num_requests=n, rate_per_s=1.0, prompt_tokens=(setting.prompt_tokens,),
                    prompt_weights=(1.0,), output_tokens=(setting.output_tokens,), seed=seed)
    return poisson_schedule(spec)  # only the prompts are used: the closed loop ignores arrival times


def row(mode: str, concurrency: int, results: list[Result], wall_s: float) -> Row:
    ok = [r for r in results if r.ok]
    ttft = np.array([r.ttft_ms for r in ok if r.ttft_ms is not None] or [np.nan])
    itl = np.array([r.itl_ms for r in ok if r.itl_ms is not None] or [np.nan])
    return Row(
        mode, concurrency, len(results), len(results) - len(ok),
        sum(r.output_tokens for r in ok) / wall_s,
        float(np.percentile(ttft, 50)), float(np.percentile(ttft, 90)),
        float(np.percentile(itl, 50)), float(np.percentile(itl, 90)), wall_s,
    )


async def run_mode(mode: str, prefill_groups: int, decode_groups: int, setting: Setting) -> list[Row]:
    plan = plan_from_deployment(
        load_manifest(DEFAULT_MANIFEST), prefill_groups=prefill_groups, decode_groups=decode_groups,
        max_model_len=setting.prompt_tokens + setting.output_tokens + 16,
    )
    stack = EmbeddedStack(plan, StackOptions(port=0))
    t0 = time.monotonic()
    await stack.start(lambda m: print(f"  [{mode}] {m}", file=sys.stderr, flush=True))
    print(f"  [{mode}] up in {time.monotonic() - t0:.0f} s: {stack.url}", file=sys.stderr, flush=True)
    rows = []
    try:
        # Warm-up: first steps pay for lazy initialisation in every rank.
        await drive_closed(stack.url, plan.served_model, arrivals(setting, 4, seed=99), concurrency=4)
        for c in setting.concurrencies:
            n = max(setting.min_requests, c * setting.requests_per_client)
            load = arrivals(setting, n, seed=c)
            results, wall_s = await drive_closed(stack.url, plan.served_model, load, c)
            rows.append(row(mode, c, results, wall_s))
            r = rows[-1]
            print(f"  [{mode}] concurrency {c:>3}: {r.output_tokens_per_s:7.1f} tok/s, TTFT p50 "
                  f"{r.ttft_p50_ms:7.1f} ms, ITL p50 {r.itl_p50_ms:6.1f} ms, {r.errors} errors",
                  file=sys.stderr, flush=True)
    finally:
        await stack.stop()
    return rows


def table(rows: list[Row]) -> str:
    head = (f"{'mode':<15}{'conc':>5}{'reqs':>6}{'err':>5}{'out tok/s':>11}{'TTFT p50':>10}{'TTFT p90':>10}"
            f"{'ITL p50':>9}{'ITL p90':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.mode:<15}{r.concurrency:>5}{r.requests:>6}{r.errors:>5}{r.output_tokens_per_s:>11.1f}"
                     f"{r.ttft_p50_ms:>10.1f}{r.ttft_p90_ms:>10.1f}{r.itl_p50_ms:>9.1f}{r.itl_p90_ms:>9.1f}")
    return "\n".join(lines)


def ratios(rows: list[Row]) -> list[dict[str, float]]:
    base = {r.concurrency: r for r in rows if r.mode == "aggregated"}
    out = []
    for r in rows:
        b = base.get(r.concurrency)
        if r.mode != "disaggregated" or b is None:
            continue
        out.append({
            "concurrency": r.concurrency,
            "output_tokens_per_s": r.output_tokens_per_s / b.output_tokens_per_s,
            "ttft_p50": r.ttft_p50_ms / b.ttft_p50_ms,
            "itl_p50": r.itl_p50_ms / b.itl_p50_ms,
        })
    return out


async def main_async(setting: Setting) -> list[Row]:
    rows = []
    rows += await run_mode("disaggregated", 1, 1, setting)
    rows += await run_mode("aggregated", 0, 2, setting)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two concurrencies, short requests (~3 min)")
    parser.add_argument("--json", metavar="OUT", help="write rows and ratios as JSON")
    args = parser.parse_args()
    setting = QUICK if args.quick else FULL
    # One Ray for both layouts: each stack starts its own groups and Redis inside it.
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        rows = asyncio.run(main_async(setting))
    finally:
        ray.shutdown()
    rs = ratios(rows)
    print(f"\nbench/serve.py: tiny model on the CPU, 4 ranks per layout, prompt {setting.prompt_tokens} "
          f"tokens, output {setting.output_tokens} tokens, streaming completions (latencies in ms)\n")
    print(table(rows))
    print("\ndisaggregated / aggregated (baseline measured in the same run):")
    for r in rs:
        print(f"  concurrency {r['concurrency']:>3}: output tok/s x{r['output_tokens_per_s']:.2f}, "
              f"TTFT p50 x{r['ttft_p50']:.2f}, ITL p50 x{r['itl_p50']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"setting": asdict(setting), "rows": [asdict(r) for r in rows], "ratios": rs}, indent=2
        ))
    return 1 if any(r.errors for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
