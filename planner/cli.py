"""Subcommands of the `moeplane` CLI owned by moeplane.planner: `perf`, `planner`, `profile`, and
`plan --sla` (added to moeplane.api's `plan`).

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

    planner = subparsers.add_parser(
        "planner",
        help="the SLA planner service: scales every MoEDeployment with spec.planner.enabled; dashboard",
        description="Watch MoEDeployments, size and scale their pools every interval, and serve "
        "/healthz, /metrics, /api/deployments and the dashboard at /dashboard. Redis from "
        "MOEPLANE_REDIS_URL; the dashboard's Apply needs MOEPLANE_DASHBOARD_TOKEN as a bearer token.",
    )
    planner.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    planner.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    planner.add_argument(
        "--namespace", action="append", help="only this namespace (repeatable; default: all namespaces)"
    )
    planner.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    planner.add_argument("--redis-url", help="Redis URL (default: $MOEPLANE_REDIS_URL)")
    planner.set_defaults(func=_planner)

    profile = subparsers.add_parser(
        "profile",
        help="measure the real engine's step times on a grid and write a moeplane.profile/v1 JSON",
        description="Run EPModelRunner (one process per EP rank, torch.distributed) for the manifest's "
        "prefill and decode pools at several ISLs, tokens per rank, batch sizes and contexts; write the "
        "curves the planner reads with spec.planner.perfModel: profile (and optionally a ConfigMap).",
    )
    profile.add_argument("-f", "--file", required=True, help="MoEDeployment manifest (YAML)")
    profile.add_argument("-o", "--out", required=True, help="profile JSON to write")
    profile.add_argument("--isl", default="32,64,128", help="prompt lengths (default 32,64,128)")
    profile.add_argument(
        "--tokens", default="32,64,128,256", help="prefill tokens per rank (default 32,64,128,256)"
    )
    profile.add_argument("--batch", default="1,2,4,8", help="decode sequences per rank (default 1,2,4,8)")
    profile.add_argument("--context", default="16,64,256", help="decode context tokens (default 16,64,256)")
    profile.add_argument(
        "--repeats", type=int, default=3, help="timed steps per point; the median counts (default 3)"
    )
    profile.add_argument("--configmap", metavar="NAME", help="also write the profile to this ConfigMap")
    profile.add_argument(
        "--namespace", default="default", help="namespace of the ConfigMap (default default)"
    )
    profile.add_argument("--kubeconfig", help="kubeconfig for --configmap (default KUBECONFIG)")
    profile.set_defaults(func=_profile)

    # `moeplane plan` belongs to moeplane.api (the resolved layout); the planner adds --sla, the
    # layout search, to it rather than a second command.
    plan = subparsers.choices.get("plan")
    if plan is not None:
        from moeplane.planner.layout_cmd import add_arguments

        add_arguments(plan)
        layout_only = plan.get_default("func")

        def plan_or_search(args: argparse.Namespace) -> int:
            if getattr(args, "sla", False):
                from moeplane.planner.layout_cmd import run

                return run(args)
            return int(layout_only(args))

        plan.set_defaults(func=plan_or_search)


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
    p.add_argument(
        "--pareto",
        action="store_true",
        help="print the decode layout's frontier: output tokens/s per GPU against tokens/s per user, "
        "by batch",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--write-profile", metavar="OUT", help="also write the model's curves as a profile JSON")


def _perf(args: argparse.Namespace) -> int:
    from moeplane.planner.perf_cmd import run

    return run(args)


def _planner(args: argparse.Namespace) -> int:
    from moeplane.planner.service.main import run

    return run(args)


def _profile(args: argparse.Namespace) -> int:
    from moeplane.planner.profile_cmd import run

    return run(args)
