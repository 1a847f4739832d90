"""`moeplane perf`: the roofline model's per-node throughput of a manifest's layout.

A thin edge: reads the manifest, builds the models, prints a table or JSON. Bad manifests exit 1
with every problem listed; the model's own errors exit 1 with their message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from moeplane.api.errors import SpecInvalid
from moeplane.api.hardware import HardwarePreset
from moeplane.api.spec import MoEDeploymentSpec, parse_deployment
from moeplane.planner.perf.errors import PerfModelError
from moeplane.planner.perf.profile import profile_from_models, save_profile
from moeplane.planner.perf.report import Workload, decode_pareto, node_throughput
from moeplane.planner.perf.roofline import RooflineOptions
from moeplane.planner.spec_adapter import roofline_models


def load_spec(path: str, hardware: str | None) -> MoEDeploymentSpec:
    """The manifest's spec; with `hardware`, the spec on that GPU preset instead (its own GPUs per
    node), validated against it: memory fit and EP divisibility are the named hardware's."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PerfModelError(f"{path}: {err}") from None
    if hardware is not None and isinstance(doc, dict) and isinstance(doc.get("spec"), dict):
        hw = dict(doc["spec"].get("hardware") or {})
        if hw.get("gpu") != HardwarePreset(hardware).value:
            hw.pop("gpusPerNode", None)  # the manifest's node shape belongs to its own GPU
        hw["gpu"] = HardwarePreset(hardware).value
        doc = {**doc, "spec": {**doc["spec"], "hardware": hw}}
    return parse_deployment(doc).spec


def perf_report(args: argparse.Namespace) -> dict[str, Any]:
    spec = load_spec(args.file, args.hardware)
    options = RooflineOptions(
        two_batch_overlap=not args.no_two_batch_overlap,
        balancedness=args.balancedness,
        prefix_cache_hit_rate=args.cache_hit_rate,
        mtp_draft_tokens=args.mtp_draft_tokens,
        mtp_acceptance=args.mtp_acceptance,
    )
    prefill, decode = roofline_models(spec, options)
    work = Workload(
        isl_tokens=args.isl,
        osl_tokens=args.osl,
        prefill_tokens_per_rank=args.prefill_tokens,
        itl_target_ms=args.itl_ms if args.itl_ms is not None else spec.sla.itl_ms,
    )
    result = node_throughput(prefill, decode, work)
    pareto = (
        decode_pareto(decode, work.isl_tokens, work.osl_tokens) if getattr(args, "pareto", False) else None
    )
    if args.write_profile:
        save_profile(
            profile_from_models(prefill, decode, model=prefill.arch.name, hardware=prefill.hw.name),
            args.write_profile,
        )
    return {
        "model": prefill.arch.name,
        "hardware": prefill.hw.name,
        "prefill_layout": {
            "expert_parallel": prefill.gpus_per_group,
            "nodes_per_group": prefill.nodes_per_group,
            "routed_experts_per_gpu": prefill.layout.routed_experts_per_gpu,
        },
        "decode_layout": {
            "expert_parallel": decode.gpus_per_group,
            "nodes_per_group": decode.nodes_per_group,
            "routed_experts_per_gpu": decode.layout.routed_experts_per_gpu,
            "kv_tokens_per_gpu": decode.kv_tokens_per_rank,
        },
        "workload": {
            "isl_tokens": work.isl_tokens,
            "osl_tokens": work.osl_tokens,
            "prefill_tokens_per_rank": work.prefill_tokens_per_rank,
            "itl_target_ms": work.itl_target_ms,
        },
        **result.as_dict(),
        **({"pareto": [p.as_dict() for p in pareto]} if pareto is not None else {}),
        "calibration": CALIBRATION_NOTE,
    }


CALIBRATION_NOTE = (
    "end-to-end factors fit to SGLang's 96 x H100 (Hopper) and GB200 NVL72 (Blackwell) DeepSeek "
    "benchmarks; held-out sources within 25% (bench/planner.py prints them)"
)


def format_report(r: dict[str, Any]) -> str:
    p, d, w = r["prefill_layout"], r["decode_layout"], r["workload"]
    lines = [
        f"{r['model']} on {r['hardware']}: prefill EP{p['expert_parallel']} "
        f"({p['nodes_per_group']} nodes/group, "
        f"{p['routed_experts_per_gpu']} experts/GPU), decode EP{d['expert_parallel']} "
        f"({d['nodes_per_group']} nodes/group, {d['routed_experts_per_gpu']} experts/GPU)",
        f"workload: ISL {w['isl_tokens']:.0f}, OSL {w['osl_tokens']:.0f}, "
        f"prefill {w['prefill_tokens_per_rank']:.0f} "
        f"tokens/rank/step, ITL target {w['itl_target_ms']} ms",
        f"prefill: {r['prefill_input_tokens_per_s_per_node']:>10,.0f} input tokens/s per node "
        f"(step {r['prefill_step_ms']:.1f} ms)",
        f"decode:  {r['decode_output_tokens_per_s_per_node']:>10,.0f} output tokens/s per node "
        f"(batch {r['decode_batch_per_rank']:.1f}/GPU, ITL {r['decode_itl_ms']:.1f} ms, "
        f"limited by {r['decode_limit']})",
        "",
        f"{'step breakdown (ms, busiest GPU)':34s}{'prefill':>12s}{'decode':>12s}",
    ]
    bp, bd = r["breakdown"]["prefill"], r["breakdown"]["decode"]
    for key in bp:
        if key.endswith("_ms"):
            lines.append(f"  {key[:-3]:32s}{bp[key]:>12.2f}{bd[key]:>12.2f}")
    if "pareto" in r:
        lines += [
            "",
            "decode frontier (batch per GPU: tokens/s per user, tokens/s per GPU; * = past KV memory)",
        ]
        for p in r["pareto"]:
            mark = "" if p["fits_kv"] else " *"
            lines.append(
                f"  batch {p['batch_per_rank']:>6.0f}  step {p['step_ms']:8.2f} ms  "
                f"{p['tokens_per_s_per_user']:8.1f} tok/s/user  "
                f"{p['tokens_per_s_per_gpu']:9.1f} tok/s/GPU{mark}"
            )
    lines += ["", f"calibration: {r['calibration']}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        report = perf_report(args)
    except SpecInvalid as err:
        for problem in err.messages:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return 1
    except (PerfModelError, ValueError) as err:
        print(f"moeplane perf: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0
