"""`moeplane profile`: measure the real engine (`EPModelRunner`, one process per EP rank over
torch.distributed) on a grid of prefill (ISL × tokens per rank) and decode (batch per rank ×
context) steps, and write the curves as a `moeplane.profile/v1` file, optionally also as a
ConfigMap. The group's shape fields (DP ranks, nodes, KV tokens per rank) come from the
manifest's layout, the step times from the measurement.

Each step runs on every rank with the same per-rank batch (MoE layers are collectives); the step
time is the slowest rank's median over `repeats`, after one warm-up step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ProfileError(ValueError):
    """Bad profiling input: names the option and the value."""


@dataclass(frozen=True)
class ProfileGrid:
    isl_tokens: tuple[int, ...]
    tokens_per_rank: tuple[int, ...]
    batch_per_rank: tuple[int, ...]
    context_tokens: tuple[int, ...]
    repeats: int = 3
    block_size: int = 16

    def __post_init__(self) -> None:
        for name in ("isl_tokens", "tokens_per_rank", "batch_per_rank", "context_tokens"):
            axis = getattr(self, name)
            if len(axis) < 2 or any(b <= a for a, b in itertools.pairwise(axis)) or axis[0] < 0:
                raise ProfileError(
                    f"--{name.replace('_', '-')} needs >= 2 strictly increasing values, got {axis}"
                )
        if min(self.isl_tokens) < 1 or min(self.tokens_per_rank) < 1 or min(self.batch_per_rank) < 1:
            raise ProfileError("ISLs, tokens per rank and batch sizes must be >= 1")
        if self.repeats < 1 or self.block_size < 1:
            raise ProfileError(
                f"--repeats and block size must be >= 1, got {self.repeats}, {self.block_size}"
            )


def prefill_batch(isl: int, tokens: int) -> list[tuple[int, int]]:
    """(tokens already cached, new tokens) per sequence of one prefill step of `tokens` tokens at
    prompt length `isl`: whole prompts when several fit, else the last chunk of one prompt."""
    if tokens >= isl:
        return [(0, isl)] * (tokens // isl)
    return [(isl - tokens, tokens)]


def _rank(ctx: Any, arch_name: str, num_physical: int, grid: ProfileGrid) -> dict[str, list[list[float]]]:
    """One rank: [isl][tokens] prefill and [batch][context] decode median step seconds."""
    import torch
    from moeplane.api.presets import model_preset
    from moeplane.workers.model import EPModelRunner, SeqStep, build_metadata
    from moeplane.workers.placement import Placement

    arch = model_preset(arch_name)
    comm = ctx.comm()
    placement = Placement.identity(arch.num_moe_layers, arch.num_routed_experts, num_physical)
    runner = EPModelRunner(arch, 0, placement=placement, comm=comm)
    bs = grid.block_size

    def timed(seqs: list[tuple[int, int]]) -> float:
        blocks, steps, next_block = [], [], 0
        for cached, new in seqs:
            n = -(-(cached + new) // bs)
            blocks.append(list(range(next_block, next_block + n)))
            next_block += n
        for (cached, new), table in zip(seqs, blocks, strict=True):
            steps.append(SeqStep(cached, new, tuple(table), True))
        cache = runner.allocate_kv_cache(next_block, bs)
        meta = build_metadata(steps, bs)
        ids = torch.randint(0, arch.vocab_size, (sum(n for _, n in seqs),), dtype=torch.int64)
        times = []
        for i in range(grid.repeats + 1):
            comm.barrier()
            t0 = time.perf_counter()
            runner.forward(ids, meta, cache)
            if i:  # the first step warms up
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    prefill = [[timed(prefill_batch(isl, t)) for t in grid.tokens_per_rank] for isl in grid.isl_tokens]
    decode = [[timed([(c, 1)] * b) for c in grid.context_tokens] for b in grid.batch_per_rank]
    return {"prefill": prefill, "decode": decode}


def measure(manifest: dict[str, Any], grid: ProfileGrid, progress: Any = None) -> dict[str, Any]:
    """The profile (as its JSON dict) of the manifest's prefill and decode pools."""
    from moeplane.api.enums import Role
    from moeplane.api.spec import parse_deployment
    from moeplane.planner.perf.profile import Profile
    from moeplane.planner.spec_adapter import roofline_models
    from moeplane.workers.ep.launch import spawn_ranks

    spec = parse_deployment(manifest).spec
    if spec.model.preset is None:
        raise ProfileError("spec.model.preset: profiling needs a model preset")
    shapes = dict(zip(Role, roofline_models(spec), strict=True))
    curves: dict[str, Any] = {}
    # Each launch measures both kinds of step; pools of the same group shape share one launch.
    measured: dict[tuple[int, int], list[dict[str, list[list[float]]]]] = {}
    for role in Role:
        m = shapes[role]
        shape = (spec.pool(role).expert_parallel, m.layout.expert_slots)
        ep, num_physical = shape
        if shape not in measured:
            if progress:
                progress(f"EP{ep} group with {num_physical} expert slots ({role.value})")
            measured[shape] = spawn_ranks(
                _rank, ep, (spec.model.preset.value, num_physical, grid), timeout_s=600
            )
        per_rank = measured[shape]
        key = role.value
        worst = [
            [max(r[key][i][j] for r in per_rank) * 1e3 for j in range(len(per_rank[0][key][i]))]
            for i in range(len(per_rank[0][key]))
        ]
        common = {
            "expert_parallel": ep,
            "dp_ranks": m.dp_ranks,
            "nodes_per_group": m.nodes_per_group,
            "kv_tokens_per_rank": m.kv_tokens_per_rank,
            "step_ms": worst,
        }
        if role is Role.PREFILL:
            curves[key] = {
                **common,
                "isl_tokens": list(grid.isl_tokens),
                "tokens_per_rank": list(grid.tokens_per_rank),
            }
        else:
            curves[key] = {
                **common,
                "batch_per_rank": list(grid.batch_per_rank),
                "context_tokens": list(grid.context_tokens),
            }
    profile = Profile.model_validate(
        {
            "model": spec.model.preset.value,
            "hardware": spec.hardware.gpu.value,
            "source": "measured",
            **curves,
        }
    )
    return profile.model_dump(mode="json")


def configmap(name: str, namespace: str, profile: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "moeplane", "moeplane.io/kind": "profile"},
        },
        "data": {"profile.json": json.dumps(profile, indent=1)},
    }


def _axis(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ProfileError(f"{option}: expected comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    try:
        grid = ProfileGrid(
            isl_tokens=_axis(args.isl, "--isl"),
            tokens_per_rank=_axis(args.tokens, "--tokens"),
            batch_per_rank=_axis(args.batch, "--batch"),
            context_tokens=_axis(args.context, "--context"),
            repeats=args.repeats,
        )
        manifest = yaml.safe_load(Path(args.file).read_text())
        started = time.perf_counter()
        profile = measure(
            manifest, grid, progress=lambda m: print(f"profiling {m}…", file=sys.stderr, flush=True)
        )
    except (ProfileError, OSError, ValueError) as exc:
        print(f"moeplane profile: {exc}", file=sys.stderr)
        return 1
    Path(args.out).write_text(json.dumps(profile, indent=1) + "\n")
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f}s")
    if args.configmap:
        from kubernetes import client, config

        api: Any = client.CoreV1Api(
            config.new_client_from_config(config_file=args.kubeconfig)
        )  # stubs want V1 models
        body = configmap(args.configmap, args.namespace, profile)
        try:
            api.create_namespaced_config_map(args.namespace, body)
        except client.exceptions.ApiException as exc:
            if exc.status != 409:
                print(
                    f"moeplane profile: ConfigMap {args.namespace}/{args.configmap}: "
                    f"{exc.status} {exc.reason}",
                    file=sys.stderr,
                )
                return 1
            api.replace_namespaced_config_map(args.configmap, args.namespace, body)
        print(f"wrote ConfigMap {args.namespace}/{args.configmap}")
    return 0
