"""`moeplane plan --sla`: the cheapest EP layout per pool for a workload, with the runner-ups.

A thin edge over `layouts.advise`: reads the manifest (its model, hardware, SLA and planner
settings), the workload from the flags, prints a table or JSON. Bad manifests exit 1 with every
problem; a workload no layout can serve exits 1 saying so.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

from moeplane.api.enums import Role
from moeplane.api.errors import SpecInvalid
from moeplane.planner.config import SlaTargets
from moeplane.planner.layouts import LayoutAdvice, PoolChoice, Workload, advise
from moeplane.planner.perf.errors import PerfModelError
from moeplane.planner.spec_adapter import config_from_spec


def add_arguments(plan: argparse.ArgumentParser) -> None:
    g = plan.add_argument_group("SLA layout search (--sla)")
    g.add_argument(
        "--sla",
        action="store_true",
        help="search the EP layouts of each pool for the cheapest that meets the SLA at a workload",
    )
    g.add_argument("--rate", type=float, help="requests per second (required with --sla)")
    g.add_argument("--isl", type=float, default=2000.0, help="mean prompt tokens (default 2000)")
    g.add_argument("--osl", type=float, default=1000.0, help="mean output tokens (default 1000)")
    g.add_argument(
        "--length-cv", type=float, default=0.6, help="coefficient of variation of lengths (default 0.6)"
    )
    g.add_argument("--ttft-ms", type=float, help="TTFT target (default: the manifest's spec.sla.ttftMs)")
    g.add_argument("--itl-ms", type=float, help="ITL target (default: the manifest's spec.sla.itlMs)")


def _pool_lines(choice: PoolChoice) -> list[str]:
    role = choice.role.value
    lines = []
    cur = choice.current
    if choice.best is None:
        lines.append(f"{role}: no layout meets the SLA at this workload")
    else:
        b = choice.best
        lines.append(
            f"{role}: EP{b.expert_parallel} with {b.redundant_experts} redundant experts x {b.groups} groups "
            f"= {b.gpus} GPUs ({b.nodes_per_group} node(s) per group, {b.kv_tokens_per_gpu:,} KV tokens/GPU)"
        )
    now = f"{cur.groups} groups = {cur.gpus} GPUs" if cur.gpus is not None else f"cannot: {cur.problem}"
    lines.append(f"  now: {cur.label}: {now}")
    for c, why in choice.runners_up:
        size = f"{c.groups} x {c.gpus_per_group} = {c.gpus} GPUs" if c.gpus is not None else "-"
        lines.append(f"  runner-up {c.label:24s} {size:24s} {why}")
    return lines


def format_advice(advice: LayoutAdvice, sla: SlaTargets) -> str:
    w = advice.workload
    lines = [
        f"workload: {w.rate_per_s:g} req/s, ISL {w.isl_tokens:g}, OSL {w.osl_tokens:g}; "
        f"SLA TTFT {sla.ttft_ms:g} ms, ITL {sla.itl_ms:g} ms at p{sla.percentile:g}",
        f"recommendation: {advice.summary()}",
        "",
    ]
    for role in (Role.PREFILL, Role.DECODE):
        lines += _pool_lines(advice.pool(role))
    return "\n".join(lines)


def report(args: argparse.Namespace) -> tuple[LayoutAdvice, SlaTargets]:
    from moeplane.planner.perf_cmd import load_spec

    spec = load_spec(args.file, None)
    sla = SlaTargets(
        args.ttft_ms if args.ttft_ms is not None else spec.sla.ttft_ms,
        args.itl_ms if args.itl_ms is not None else spec.sla.itl_ms,
        spec.sla.percentile,
    )
    config = replace(config_from_spec(spec), sla=sla)
    work = Workload(args.rate, args.isl, args.osl, args.length_cv, args.length_cv)
    return advise(spec, config, work), sla


def run(args: argparse.Namespace) -> int:
    if args.rate is None or args.rate <= 0 or args.isl < 1 or args.osl < 1:
        print("moeplane plan --sla: needs --rate > 0 and --isl, --osl >= 1", file=sys.stderr)
        return 2
    try:
        advice, sla = report(args)
    except SpecInvalid as err:
        for problem in err.messages:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return 1
    except PerfModelError as err:
        print(f"moeplane plan --sla: {err}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        out: dict[str, Any] = advice.to_dict()
        out["sla"] = {"ttftMs": sla.ttft_ms, "itlMs": sla.itl_ms, "percentile": sla.percentile}
        print(json.dumps(out, indent=1))
    else:
        print(format_advice(advice, sla))
    if advice.prefill.best is None or advice.decode.best is None:
        return 1
    return 0
