"""Benchmark of the SLA planner: `python bench/planner.py [--quick] [--json OUT]`.

Replays three synthetic traces (Poisson, bursty on/off, diurnal) against DeepSeek-R1 served on
H800 as `examples/deepseek-r1.yaml` lays it out (prefill EP32 over 4 nodes, decode EP144 over 18
nodes), with the roofline model, under five policies measured in the same run: our planner, an
oracle that knows each interval's load in advance (the baseline of the GPU-hours ratio), static
provisioning for the peak and for the mean, and a reactive threshold autoscaler.

Targets: ours attains the SLA for >= 99% of requests (the SLA binds p99) and uses <= 1.15x the
oracle's GPU-hours on every trace. Also printed: the roofline model against published per-node
throughput (with sources) and one-step/three-step forecast errors of each predictor on the traces.

JSON: `rows` (trace, policy, attainment, gpu_hours, gpu_hours_over_oracle, ...), `targets`,
`published`, `backtests`, `settings`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from moeplane.api.enums import Predictor
from moeplane.planner.config import SlaTargets
from moeplane.planner.perf.published import comparison
from moeplane.planner.predictors import arima_available, backtest, make_predictor
from moeplane.planner.sim.scenario import POLICIES, load_scenario, synthetic_traces
from moeplane.planner.sim.traces import LengthDist

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "examples" / "deepseek-r1.yaml"
SLA = SlaTargets(ttft_ms=2000.0, itl_ms=50.0, percentile=99.0)
ATTAINMENT_TARGET = 0.99
GPU_HOURS_OVER_ORACLE_TARGET = 1.15


def _progress(label: str):
    started = time.perf_counter()

    def show(fraction: float) -> None:
        done = int(fraction * 30)
        sys.stderr.write(
            f"\r  {label:24s} [{'#' * done}{'.' * (30 - done)}] {fraction:4.0%} "
            f"{time.perf_counter() - started:5.1f}s"
        )
        if fraction >= 1:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter traces (a few minutes in all)")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=1200.0, help="mean arrivals per second (default 1200)")
    args = ap.parse_args()

    warmup_s, scored_s = (900.0, 2700.0) if args.quick else (900.0, 5400.0)
    isl, osl = LengthDist(2000, 0.6, 16, 16384), LengthDist(2000, 0.6, 16, 16384)
    scenario = load_scenario(MANIFEST, sla=SLA, warmup_s=warmup_s, predictor=Predictor.HOLT)
    traces = synthetic_traces(
        args.rate, warmup_s + scored_s, isl=isl, osl=osl, seed=args.seed, warmup_s=warmup_s
    )
    print(
        f"DeepSeek-R1 on H800 ({MANIFEST.name}): prefill EP{scenario.prefill.gpus_per_group}/"
        f"{scenario.prefill.nodes_per_group} nodes, decode EP{scenario.decode.gpus_per_group}/"
        f"{scenario.decode.nodes_per_group} nodes; SLA TTFT {SLA.ttft_ms:.0f} ms, ITL {SLA.itl_ms:.0f} ms at "
        f"p{SLA.percentile:.0f}; {args.rate:.0f} req/s mean, "
        f"ISL/OSL {isl.mean_tokens:.0f}/{osl.mean_tokens:.0f}; "
        f"{warmup_s:.0f}s warm-up + {scored_s:.0f}s scored; start-up {scenario.sim.startup_s:.0f}s"
    )

    rows = []
    for trace_name, trace in traces.items():
        reports = {}
        for policy in POLICIES:
            reports[policy] = scenario.run(trace, policy, progress=_progress(f"{trace_name}/{policy}"))
        oracle = reports["oracle"].gpu_hours
        for rep in reports.values():
            row = rep.row()
            row["requests_per_wall_s"] = round(trace.requests / rep.wall_s, 1)
            row["gpu_hours_over_oracle"] = round(rep.gpu_hours / oracle, 4) if oracle else None
            rows.append(row)

    header = (
        f"{'trace':8s} {'policy':12s} {'attain':>8s} {'ttft ok':>8s} {'itl ok':>8s} {'gpu-h':>8s} "
        f"{'x oracle':>8s} {'nodes':>7s} {'peak':>5s} {'ttft p99':>9s} {'itl p99':>8s} {'wall s':>7s}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(
            f"{r['trace']:8s} {r['policy']:12s} {r['attainment']:8.4f} {r['ttft_attainment']:8.4f} "
            f"{r['itl_attainment']:8.4f} {r['gpu_hours']:8.1f} {r['gpu_hours_over_oracle']:8.3f} "
            f"{r['mean_nodes']:7.1f} {r['peak_nodes']:5d} {r['ttft_p99_ms']:9.0f} {r['itl_p99_ms']:8.1f} "
            f"{r['wall_s']:7.2f}"
        )

    targets = []
    for r in rows:
        if r["policy"] == "ours":
            ok_att = r["attainment"] >= ATTAINMENT_TARGET
            ok_gpu = r["gpu_hours_over_oracle"] <= GPU_HOURS_OVER_ORACLE_TARGET
            targets.append(
                {
                    "trace": r["trace"],
                    "attainment": r["attainment"],
                    "attainment_ok": ok_att,
                    "gpu_hours_over_oracle": r["gpu_hours_over_oracle"],
                    "gpu_hours_ok": ok_gpu,
                }
            )
    print("\ntargets (ours): attainment >= 0.99, GPU-hours <= 1.15x oracle")
    for t in targets:
        print(
            f"  {t['trace']:8s} attainment {t['attainment']:.4f} {'ok' if t['attainment_ok'] else 'MISS'}   "
            f"GPU-hours {t['gpu_hours_over_oracle']:.3f}x {'ok' if t['gpu_hours_ok'] else 'MISS'}"
        )

    published = comparison()
    print("\nroofline model vs published per-node throughput (tokens/s per node)")
    print(
        f"  {'hardware':8s} {'layout':40s} {'prefill pub':>11s} {'model':>9s} {'ratio':>6s} "
        f"{'decode pub':>10s} {'model':>9s} {'ratio':>6s}"
    )
    for p in published:
        print(
            f"  {p['hardware']:8s} {p['layout']:40s} "
            f"{p['published_prefill_input_tokens_per_s_per_node']:11,.0f} "
            f"{p['model_prefill_input_tokens_per_s_per_node']:9,.0f} "
            f"{p['prefill_model_over_published']:6.2f} "
            f"{p['published_decode_output_tokens_per_s_per_node']:10,.0f} "
            f"{p['model_decode_output_tokens_per_s_per_node']:9,.0f} {p['decode_model_over_published']:6.2f}"
        )
        print(f"           {p['source']}\n           {p['url']}\n           ({p['note']})")

    kinds = [k for k in Predictor if k is not Predictor.ARIMA or arima_available()]
    backtests = []
    for trace_name, trace in traces.items():
        series = [x.arrival_rate_per_s for x in trace.interval_loads(scenario.planner.interval_s, 5.0)]
        for kind in kinds:
            for horizon in (1, 3):
                b = backtest(make_predictor(kind), series, horizon=horizon)
                backtests.append(
                    {
                        "trace": trace_name,
                        "predictor": kind.value,
                        "horizon": horizon,
                        "mape": round(b.mape, 4),
                        "mae": round(b.mae, 3),
                    }
                )
    print("\npredictor backtests: mean absolute error / mean, per-minute arrival rate (1 and 3 steps ahead)")
    print(f"  {'trace':8s} " + " ".join(f"{k.value:>15s}" for k in kinds))
    for trace_name in traces:
        cells = []
        for kind in kinds:
            m = {
                b["horizon"]: b["mape"]
                for b in backtests
                if b["trace"] == trace_name and b["predictor"] == kind.value
            }
            cells.append(f"{m[1]:7.3f}/{m[3]:7.3f}")
        print(f"  {trace_name:8s} " + " ".join(cells))
    if not arima_available():
        print("  (arima skipped: statsmodels is not installed)")

    if args.json:
        out = {
            "rows": rows,
            "targets": targets,
            "published": published,
            "backtests": backtests,
            "settings": {
                "quick": args.quick,
                "seed": args.seed,
                "rate_per_s": args.rate,
                "warmup_s": warmup_s,
                "scored_s": scored_s,
                "sla": {"ttft_ms": SLA.ttft_ms, "itl_ms": SLA.itl_ms, "percentile": SLA.percentile},
                "manifest": str(MANIFEST.relative_to(ROOT)),
                "startup_s": scenario.sim.startup_s,
            },
        }
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
