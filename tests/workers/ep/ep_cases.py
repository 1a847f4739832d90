"""EP test cases shared by the CPU (gloo) and CUDA suites: placements, prompts and reference checks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from moeplane.api.presets import model_preset
from moeplane.workers.ep.steps import RankStep, StepOutput
from moeplane.workers.model import SeqStep, build_metadata, prefill_metadata
from moeplane.workers.model.reference import reference_hidden
from moeplane.workers.model.weights import RandomWeights, full_state_dict
from moeplane.workers.placement import Placement

TINY = model_preset("tiny")
E = TINY.num_routed_experts
TOL = 1e-5
BLOCK = 4


@dataclass(frozen=True)
class Case:
    name: str
    weights: dict[str, torch.Tensor]
    placement: Placement
    prompts: list[list[list[int]]]  # [rank][seq] -> token ids


def prompts_for(world: int, seed: int, idle: set[int]) -> list[list[list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for r in range(world):
        lens = [] if r in idle else torch.randint(1, 12, (1 + r % 3,), generator=gen).tolist()
        out.append([torch.randint(0, 256, (n,), generator=gen).tolist() for n in lens])
    return out


def _redundant(world: int, seed: int) -> Placement:
    """E + 2 * world slots; hot experts replicated; slots shuffled per layer so replicas are spread."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(TINY.num_moe_layers):
        row = torch.cat((torch.arange(E), torch.randint(0, E, (2 * world,), generator=gen)))
        rows.append(row[torch.randperm(row.numel(), generator=gen)])
    return Placement.from_phy2log(torch.stack(rows), E)


def _skewed_weights(base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Router bias that sends every token to experts 0..7 (the first two groups)."""
    w = dict(base)
    for i in range(TINY.first_k_dense_layers, TINY.num_layers):
        bias = torch.zeros(E)
        bias[:8] = 10.0
        w[f"model.layers.{i}.mlp.gate.e_score_correction_bias"] = bias
    return w


def cases_for(world: int) -> list[Case]:
    base = full_state_dict(TINY, RandomWeights(TINY, 31))
    identity = Placement.identity(TINY.num_moe_layers, E)
    return [
        Case("plain", base, identity, prompts_for(world, 1, idle=set())),
        Case("redundant", base, _redundant(world, 2), prompts_for(world, 2, idle=set())),
        Case("skewed", _skewed_weights(base), identity, prompts_for(world, 3, idle=set())),
        Case("idle", base, _redundant(world, 4), prompts_for(world, 4, idle=set(range(1, world, 2)))),
    ]


def prefill_step(seqs: list[list[int]]) -> RankStep:
    if not seqs:
        return RankStep.idle()
    return RankStep(torch.tensor([t for s in seqs for t in s]), prefill_metadata([len(s) for s in seqs]))


def paged_steps(seqs: list[list[int]], decode_tokens: list[int]) -> tuple[RankStep, RankStep]:
    """Paged prefill of every sequence, then one decode token each; block b*8.. per sequence."""
    if not seqs:
        return RankStep.idle(), RankStep.idle()
    tables = [tuple(range(b * 8, b * 8 + 8)) for b in range(len(seqs))]
    pre = build_metadata([SeqStep(0, len(s), tables[b]) for b, s in enumerate(seqs)], BLOCK)
    dec = build_metadata([SeqStep(len(s), 1, tables[b]) for b, s in enumerate(seqs)], BLOCK)
    ids = torch.tensor([t for s in seqs for t in s])
    return RankStep(ids, pre), RankStep(torch.tensor(decode_tokens), dec)


_REFERENCE: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}


def reference_for(case: Case, seq: list[int]) -> torch.Tensor:
    key = (case.name, tuple(seq))
    if key not in _REFERENCE:
        _REFERENCE[key] = reference_hidden(TINY, case.weights, torch.tensor(seq))
    return _REFERENCE[key]


def check_prefill(case: Case, rank_out: StepOutput, seqs: list[list[int]], tol: float = TOL) -> None:
    if not seqs:
        assert rank_out.hidden.shape == (0, TINY.hidden_size)
        assert rank_out.logits.shape == (0, TINY.vocab_size)
        return
    ref = [reference_for(case, s) for s in seqs]
    assert (rank_out.hidden - torch.cat(ref)).abs().max().item() < tol
    ref_logits = torch.stack([h[-1] for h in ref]) @ case.weights["lm_head.weight"].T
    assert (rank_out.logits - ref_logits).abs().max().item() < tol


