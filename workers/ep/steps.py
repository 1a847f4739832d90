"""Steps of an EP group: per-rank inputs and outputs, and running them on one rank's runner.

Used by the process launcher (tests, benchmarks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from moeplane.api.arch import ModelArch
from moeplane.api.runtime import BLOCK_SIZE_TOKENS
from moeplane.workers.ep.launch import RankContext
from moeplane.workers.model.metadata import AttentionMetadata
from moeplane.workers.model.runner import EPModelRunner, empty_metadata
from moeplane.workers.model.weights import WeightSource
from moeplane.workers.placement import Placement


@dataclass(frozen=True)
class RankStep:
    """One rank's batch for one step: input_ids [T] int64 and its metadata (T may be 0)."""

    input_ids: torch.Tensor
    meta: AttentionMetadata

    @classmethod
    def idle(cls) -> RankStep:
        return cls(torch.empty(0, dtype=torch.int64), empty_metadata())


@dataclass(frozen=True)
class StepOutput:
    """One rank's result of one step (CPU tensors).

    Attributes:
        hidden: [T, hidden] final-normed states.
        logits: [N, vocab] fp32 at `meta.logits_indices`.
        expert_load: [num_moe_layers, S] int64 rows this rank's slots computed in the step (tokens
            from every rank, so an idle rank still shows load).
    """

    hidden: torch.Tensor
    logits: torch.Tensor
    expert_load: torch.Tensor


def run_step(runner: EPModelRunner, step: RankStep, kv_cache: Sequence[torch.Tensor] | None) -> StepOutput:
    meta = step.meta.to(runner.device)
    hidden = runner.forward_hidden(step.input_ids, meta, kv_cache)
    with torch.inference_mode():
        logits = runner.model.logits(hidden[meta.logits_indices])
    return StepOutput(hidden=hidden.cpu(), logits=logits.cpu(), expert_load=runner.take_expert_load().cpu())


@dataclass(frozen=True)
class EPJob:
    """A fixed sequence of steps for every rank (`steps[rank][i]` is rank's batch at step i)."""

    arch: ModelArch
    weights: WeightSource | int
    placement: Placement | None
    steps: tuple[tuple[RankStep, ...], ...]
    kv_blocks: int = 0
    block_size: int = BLOCK_SIZE_TOKENS
    device: str = "cpu"
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        counts = {len(s) for s in self.steps}
        if len(counts) > 1:
            raise ValueError(f"every rank must run the same number of steps, got {sorted(counts)}")


def run_jobs_rank(ctx: RankContext, jobs: Sequence[EPJob]) -> list[list[StepOutput]]:
    """The launcher's rank target: join the group once, then for each job build this rank's
    runner and run its steps. Returns `outputs[job][step]`."""
    devices = {job.device for job in jobs}
    if len(devices) != 1:
        raise ValueError(f"jobs of one launch must share a device, got {sorted(devices)}")
    comm = ctx.comm(devices.pop())
    try:
        outputs = []
        for job in jobs:
            if len(job.steps) != ctx.world_size:
                raise ValueError(f"job has steps for {len(job.steps)} ranks, the group has {ctx.world_size}")
            runner = EPModelRunner(job.arch, job.weights, job.placement, comm, comm.device, job.dtype)
            cache = runner.allocate_kv_cache(job.kv_blocks, job.block_size) if job.kv_blocks else None
            outputs.append([run_step(runner, step, cache) for step in job.steps[ctx.rank]])
        return outputs
    finally:
        comm.close()
