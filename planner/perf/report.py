"""Per-node throughput of both pools from a step model: what `moeplane perf` prints.

Prefill: every rank runs `prefill_tokens_per_rank` input tokens of `isl_tokens`-long prompts per
step. Decode: every rank runs the largest batch that meets the ITL target and fits KV memory
(or fills KV memory when no target is given).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from moeplane.planner.perf.capacity import decode_capacity, decode_context_tokens
from moeplane.planner.perf.roofline import RooflineModel

DEFAULT_PREFILL_TOKENS_PER_RANK = 16384  # DeepSeek's published prefill profile: 16K tokens per GPU


@dataclass(frozen=True)
class Workload:
    isl_tokens: float = 4096
    osl_tokens: float = 1024
    itl_target_ms: float | None = 50.0  # None: the batch fills KV memory
    prefill_tokens_per_rank: float = DEFAULT_PREFILL_TOKENS_PER_RANK


@dataclass(frozen=True)
class NodeThroughput:
    prefill_input_tokens_per_s_per_node: float
    decode_output_tokens_per_s_per_node: float
    decode_batch_per_rank: float
    decode_itl_ms: float
    decode_limit: str
    prefill_step_ms: float
    breakdown: dict[str, dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "prefill_input_tokens_per_s_per_node": round(self.prefill_input_tokens_per_s_per_node, 1),
            "decode_output_tokens_per_s_per_node": round(self.decode_output_tokens_per_s_per_node, 1),
            "decode_batch_per_rank": round(self.decode_batch_per_rank, 2),
            "decode_itl_ms": round(self.decode_itl_ms, 3),
            "decode_limit": self.decode_limit,
            "prefill_step_ms": round(self.prefill_step_ms, 3),
            "breakdown": self.breakdown,
        }


def node_throughput(prefill: RooflineModel, decode: RooflineModel, work: Workload) -> NodeThroughput:
    """Per-node prefill input tokens/s and decode output tokens/s with the step breakdowns."""
    p_step = prefill.prefill_breakdown(work.prefill_tokens_per_rank, work.isl_tokens)
    p_gpus_per_node = prefill.gpus_per_group / prefill.nodes_per_group
    prefill_tps = work.prefill_tokens_per_rank * prefill.dp_ranks / p_step.total_s / prefill.nodes_per_group

    target = work.itl_target_ms if work.itl_target_ms is not None else math.inf
    point = decode_capacity(
        decode, isl_tokens=work.isl_tokens, osl_tokens=work.osl_tokens, itl_target_ms=min(target, 1e9)
    )
    batch = point.batch_per_rank if point.feasible else 1.0
    ctx = decode_context_tokens(work.isl_tokens, work.osl_tokens)
    d_step = decode.decode_breakdown(batch, ctx)
    decode_tps = (
        batch * decode.dp_ranks * decode.output_tokens_per_step / d_step.total_s / decode.nodes_per_group
    )
    return NodeThroughput(
        prefill_input_tokens_per_s_per_node=prefill_tps,
        decode_output_tokens_per_s_per_node=decode_tps,
        decode_batch_per_rank=batch,
        decode_itl_ms=d_step.total_s / decode.output_tokens_per_step * 1e3,
        decode_limit=point.limit.value if point.feasible else "infeasible",
        prefill_step_ms=p_step.total_s * 1e3,
        breakdown={
            "prefill": {"gpus_per_node": p_gpus_per_node, "isl_tokens": work.isl_tokens, **p_step.as_dict()},
            "decode": {"context_tokens": ctx, "batch_per_rank": round(batch, 2), **d_step.as_dict()},
        },
    )


@dataclass(frozen=True)
class ParetoPoint:
    """One batch size of a layout: what a user gets against what a GPU delivers."""

    batch_per_rank: float
    step_ms: float
    tokens_per_s_per_user: float
    tokens_per_s_per_gpu: float
    fits_kv: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_per_rank": self.batch_per_rank,
            "step_ms": round(self.step_ms, 3),
            "tokens_per_s_per_user": round(self.tokens_per_s_per_user, 2),
            "tokens_per_s_per_gpu": round(self.tokens_per_s_per_gpu, 1),
            "fits_kv": self.fits_kv,
        }


def decode_pareto(decode: RooflineModel, isl_tokens: float, osl_tokens: float) -> list[ParetoPoint]:
    """Decode output tokens/s per GPU against tokens/s per user, batch 1, 2, 4, ... up to what KV
    memory holds (one point past it, marked): the throughput/latency frontier of the layout."""
    ctx = decode_context_tokens(isl_tokens, osl_tokens)
    kv_batch = decode.kv_tokens_per_rank / max(isl_tokens + osl_tokens, 1.0)
    points: list[ParetoPoint] = []
    batch = 1.0
    while True:
        step = decode.decode_step_s(batch, ctx)
        per_user = decode.output_tokens_per_step / step
        per_gpu = per_user * batch * decode.dp_ranks / decode.gpus_per_group
        points.append(ParetoPoint(batch, step * 1e3, per_user, per_gpu, batch <= kv_batch))
        if batch > kv_batch or batch >= 4096:
            break
        batch *= 2
    return points
