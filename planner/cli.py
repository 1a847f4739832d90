"""Subcommands of the `moeplane` CLI owned by moeplane.planner: `perf`.

Registering stays light (no numpy, no models): the handlers import their work when they run.
"""

from __future__ import annotations

import argparse

from moeplane.api.hardware import HardwarePreset
from moeplane.planner.perf.report import DEFAULT_PREFILL_TOKENS_PER_RANK


def register(subparsers: argparse._SubParsersAction) -> None:
    perf = subparsers.add_parser(
        "perf",
        help="per-node prefill and decode throughput of a manifest's layout (roofline model)",
        description="Model one prefill step and one decode step of the manifest's EP layout on a GPU "
        "preset and print per-node input tokens/s (prefill) and output tokens/s (decode) with the "
        "time breakdown of each step.",
    )
    add_perf_arguments(perf)
    perf.set_defaults(func=_perf)


def add_perf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", required=True, help="MoEDeployment manifest (YAML)")
    p.add_argument(
        "--hardware",
        choices=[h.value for h in HardwarePreset],
        help="GPU preset to model instead of the manifest's spec.hardware.gpu",
    )
    p.add_argument("--isl", type=float, default=4096, help="prompt tokens (default 4096)")
    p.add_argument("--osl", type=float, default=1024, help="output tokens (default 1024)")
    p.add_argument(
        "--prefill-tokens",
        type=float,
        default=DEFAULT_PREFILL_TOKENS_PER_RANK,
        help=f"prefill tokens per rank per step (default {DEFAULT_PREFILL_TOKENS_PER_RANK})",
    )
    p.add_argument(
        "--itl-ms",
        type=float,
        default=None,
        help="decode ITL target in ms (default: the manifest's spec.sla.itlMs)",
    )
    p.add_argument(
        "--no-two-batch-overlap", action="store_true", help="model steps without two-batch overlap"
    )
    p.add_argument("--balancedness", type=float, default=0.9, help="EPLB mean/max per-GPU load (default 0.9)")
    p.add_argument(
        "--cache-hit-rate", type=float, default=0.0, help="prefill prefix-cache hit rate (default 0)"
    )
    p.add_argument(
        "--mtp-draft-tokens", type=int, default=0, help="decode MTP draft tokens per step (default 0)"
    )
    p.add_argument("--mtp-acceptance", type=float, default=0.0, help="MTP draft acceptance rate (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--write-profile", metavar="OUT", help="also write the model's curves as a profile JSON")


def _perf(args: argparse.Namespace) -> int:
    from moeplane.planner.perf_cmd import run

    return run(args)
