"""EP=2 over gloo (one process per rank) with redundant experts equals transformers' logits.

Each rank builds its runner from the checkpoint directory and reads only its own experts' tensors.
"""

from __future__ import annotations

import pytest
import torch
from moeplane.api.hf_config import read_hf_config
from moeplane.workers.ep.launch import spawn_ranks
from moeplane.workers.ep.steps import EPJob, RankStep, run_jobs_rank
from moeplane.workers.model import SafetensorsWeights, prefill_metadata
from moeplane.workers.placement import Placement

from tests.workers.model.hf_reference import hf_logits

pytestmark = pytest.mark.integration

TOL = 1e-4
PROMPTS = [[[5, 77, 300, 12, 9, 250, 31], [140, 2, 66]], [[301, 17, 44, 380, 7, 7, 19, 200, 3]]]


def _redundant(num_layers: int, experts: int, extra: int, seed: int) -> Placement:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(num_layers):
        row = torch.cat((torch.arange(experts), torch.randint(0, experts, (extra,), generator=gen)))
        rows.append(row[torch.randperm(row.numel(), generator=gen)])
    return Placement.from_phy2log(torch.stack(rows), experts)


@pytest.mark.parametrize("kind", ["deepseek-v3", "qwen3-moe"])
def test_ep2_with_redundant_experts_equals_transformers(hf_checkpoint, kind: str) -> None:
    path = hf_checkpoint(kind)
    arch = read_hf_config(path).arch
    placement = _redundant(arch.num_moe_layers, arch.num_routed_experts, 2, seed=3)
    steps = tuple(
        (RankStep(torch.tensor([t for s in seqs for t in s]), prefill_metadata([len(s) for s in seqs])),)
        for seqs in PROMPTS
    )
    job = EPJob(arch, SafetensorsWeights(path), placement, steps)
    outputs = spawn_ranks(run_jobs_rank, 2, ([job],), timeout_s=240, collective_timeout_s=60)
    for rank, seqs in enumerate(PROMPTS):
        logits = outputs[rank][0][0].logits
        for b, seq in enumerate(seqs):
            want = hf_logits(path, seq)[-1]
            assert (logits[b] - want).abs().max().item() < TOL, (rank, b)
        assert outputs[rank][0][0].expert_load.sum() > 0
