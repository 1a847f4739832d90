"""EP=2 and EP=4 forward (gloo, fp32, one process per rank) against the single-process reference.

Every case runs in one launch per group size: plain placement, redundant experts, skewed routing
(some ranks receive no tokens), idle ranks (some ranks send none), and paged prefill + decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from moeplane.api.presets import model_preset
from moeplane.workers.ep.launch import spawn_ranks
from moeplane.workers.ep.steps import EPJob, RankStep, StepOutput, run_jobs_rank
from moeplane.workers.model import SeqStep, build_metadata, prefill_metadata
from moeplane.workers.model.reference import reference_hidden
from moeplane.workers.model.weights import RandomWeights, StateDictWeights, full_state_dict
from moeplane.workers.placement import Placement

pytestmark = pytest.mark.integration

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


def _prompts(world: int, seed: int, idle: set[int]) -> list[list[list[int]]]:
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


def _cases(world: int) -> list[Case]:
    base = full_state_dict(TINY, RandomWeights(TINY, 31))
    identity = Placement.identity(TINY.num_moe_layers, E)
    return [
        Case("plain", base, identity, _prompts(world, 1, idle=set())),
        Case("redundant", base, _redundant(world, 2), _prompts(world, 2, idle=set())),
        Case("skewed", _skewed_weights(base), identity, _prompts(world, 3, idle=set())),
        Case("idle", base, _redundant(world, 4), _prompts(world, 4, idle=set(range(1, world, 2)))),
    ]


def _prefill_step(seqs: list[list[int]]) -> RankStep:
    if not seqs:
        return RankStep.idle()
    return RankStep(torch.tensor([t for s in seqs for t in s]), prefill_metadata([len(s) for s in seqs]))


def _paged_steps(seqs: list[list[int]], decode_tokens: list[int]) -> tuple[RankStep, RankStep]:
    """Paged prefill of every sequence, then one decode token each; block b*8.. per sequence."""
    if not seqs:
        return RankStep.idle(), RankStep.idle()
    tables = [tuple(range(b * 8, b * 8 + 8)) for b in range(len(seqs))]
    pre = build_metadata([SeqStep(0, len(s), tables[b]) for b, s in enumerate(seqs)], BLOCK)
    dec = build_metadata([SeqStep(len(s), 1, tables[b]) for b, s in enumerate(seqs)], BLOCK)
    ids = torch.tensor([t for s in seqs for t in s])
    return RankStep(ids, pre), RankStep(torch.tensor(decode_tokens), dec)


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"ep{w}")
def launched(request: pytest.FixtureRequest) -> tuple[int, list[Case], list[list[list[StepOutput]]]]:
    world = request.param
    cases = _cases(world)
    jobs = [
        EPJob(TINY, StateDictWeights(c.weights), c.placement,
              tuple((_prefill_step(c.prompts[r]),) for r in range(world)))
        for c in cases
    ]
    paged = cases[3]  # idle ranks and redundant experts, now through the paged cache
    decode = [[7 * (b + 1) for b in range(len(paged.prompts[r]))] for r in range(world)]
    jobs.append(EPJob(TINY, StateDictWeights(paged.weights), paged.placement,
                      tuple(_paged_steps(paged.prompts[r], decode[r]) for r in range(world)),
                      kv_blocks=8 * 3, block_size=BLOCK))
    outputs = spawn_ranks(run_jobs_rank, world, (jobs,), timeout_s=240, collective_timeout_s=60)
    return world, cases, outputs


_REFERENCE: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}


def _reference_hidden(case: Case, seq: list[int]) -> torch.Tensor:
    key = (case.name, tuple(seq))
    if key not in _REFERENCE:
        _REFERENCE[key] = reference_hidden(TINY, case.weights, torch.tensor(seq))
    return _REFERENCE[key]


def _check_prefill(case: Case, rank_out: StepOutput, seqs: list[list[int]]) -> None:
    if not seqs:
        assert rank_out.hidden.shape == (0, TINY.hidden_size)
        assert rank_out.logits.shape == (0, TINY.vocab_size)
        return
    ref = [_reference_hidden(case, s) for s in seqs]
    assert (rank_out.hidden - torch.cat(ref)).abs().max().item() < TOL
    ref_logits = torch.stack([h[-1] for h in ref]) @ case.weights["lm_head.weight"].T
    assert (rank_out.logits - ref_logits).abs().max().item() < TOL


@pytest.mark.parametrize("index", range(4), ids=["plain", "redundant", "skewed", "idle"])
def test_ep_prefill_matches_reference(launched, index: int) -> None:
    world, cases, outputs = launched
    case = cases[index]
    for r in range(world):
        _check_prefill(case, outputs[r][index][0], case.prompts[r])


def test_skewed_routing_leaves_ranks_without_tokens_and_idle_ranks_still_compute(launched) -> None:
    world, _, outputs = launched
    skewed = [outputs[r][2][0].expert_load for r in range(world)]
    # Experts 0..7 live on the first half of the ranks (identity placement); the rest got nothing.
    assert all(int(load.sum()) == 0 for load in skewed[world // 2 :])
    assert all(int(load.sum()) > 0 for load in skewed[: world // 2])
    idle = [outputs[r][3][0].expert_load for r in range(1, world, 2)]
    assert all(int(load.sum()) > 0 for load in idle)  # no tokens of their own, experts still served


def test_ep_paged_prefill_then_decode_matches_reference(launched) -> None:
    world, cases, outputs = launched
    case = cases[3]
    for r in range(world):
        prefill, decode = outputs[r][4]
        seqs = case.prompts[r]
        _check_prefill(case, prefill, seqs)
        for b, s in enumerate(seqs):
            ref = _reference_hidden(case, [*s, 7 * (b + 1)])[-1] @ case.weights["lm_head.weight"].T
            assert (decode.logits[b] - ref).abs().max().item() < TOL
