"""Replica choice, grouped GEMM and one-rank dispatch/combine, in-process."""

from __future__ import annotations

import pytest
import torch
from moeplane.workers.ep.comm import EPComm
from moeplane.workers.ep.dispatch import (
    DispatchError,
    combine,
    dispatch,
    expert_inputs,
    reduce_expert_outputs,
)
from moeplane.workers.ep.grouped_gemm import GemmImpl, GroupedExperts, grouped_mm
from moeplane.workers.ep.replicas import LayerPlacement, choose_replicas
from moeplane.workers.placement import Placement, PlacementError

pytestmark = pytest.mark.unit

# 6 logical experts, 2 ranks x 4 slots; expert 0 on both ranks, expert 1 twice on rank 1.
PHY2LOG = torch.tensor([[0, 2, 3, 4, 0, 1, 5, 1]])
PLACEMENT = Placement.from_phy2log(PHY2LOG, 6)


def test_local_replica_preferred_else_spread_deterministically() -> None:
    ids = torch.tensor([[0, 1], [0, 1], [0, 1], [2, 5]])
    on0 = choose_replicas(ids, LayerPlacement.of(PLACEMENT, 0, rank=0, num_ranks=2))
    on1 = choose_replicas(ids, LayerPlacement.of(PLACEMENT, 0, rank=1, num_ranks=2))
    # Rank 0 holds expert 0 at slot 0; expert 1 only lives on rank 1 (slots 5, 7): spread by token.
    assert on0.tolist() == [[0, 5], [0, 7], [0, 5], [1, 6]]
    # Rank 1 holds both 0 (slot 4) and 1 (slots 5, 7; the lowest local one wins).
    assert on1.tolist() == [[4, 5], [4, 5], [4, 5], [1, 6]]
    assert torch.equal(PHY2LOG[0][on0], ids) and torch.equal(PHY2LOG[0][on1], ids)
    assert torch.equal(on0, choose_replicas(ids, LayerPlacement.of(PLACEMENT, 0, 0, 2)))


def test_spreading_balances_a_remote_experts_replicas() -> None:
    ids = torch.ones(1000, 1, dtype=torch.int64)
    slots = choose_replicas(ids, LayerPlacement.of(PLACEMENT, 0, rank=0, num_ranks=2))
    assert torch.bincount(slots.flatten(), minlength=8)[[5, 7]].tolist() == [500, 500]


def test_bad_layer_or_group_is_rejected() -> None:
    with pytest.raises(PlacementError, match="8 physical expert slots do not divide among 3 ranks"):
        LayerPlacement.of(PLACEMENT, 0, rank=0, num_ranks=3)
    with pytest.raises(PlacementError, match="MoE layer 1 outside"):
        LayerPlacement.of(PLACEMENT, 1, rank=0, num_ranks=2)


def _grouped_inputs(counts: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sum(counts), 16, generator=gen)
    w = torch.randn(len(counts), 24, 16, generator=gen)
    return x, w, torch.tensor(counts)


@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [0, 0, 0, 0], [7]])
def test_grouped_loop_matches_per_row_reference(counts: list[int]) -> None:
    x, w, tpg = _grouped_inputs(counts)
    group_of_row = torch.repeat_interleave(torch.arange(len(counts)), tpg)
    ref = torch.einsum("pi,poi->po", x, w[group_of_row])
    out = grouped_mm(x, w, tpg, GemmImpl.LOOP)
    assert out.shape == (sum(counts), 24)
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch has no _grouped_mm")
def test_torch_grouped_mm_matches_loop_where_the_cpu_build_has_it() -> None:
    x, w, tpg = _grouped_inputs([3, 0, 5, 1])
    try:
        grouped = grouped_mm(x, w, tpg, GemmImpl.TORCH_GROUPED)
    except RuntimeError as e:  # builds whose CPU kernel is missing: the loop is the fallback
        pytest.skip(f"no CPU _grouped_mm kernel: {e}")
    assert torch.allclose(grouped, grouped_mm(x, w, tpg, GemmImpl.LOOP), atol=1e-5)


@pytest.mark.gpu
def test_cuda_bf16_grouped_mm_matches_loop() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    counts = torch.tensor([64, 0, 17, 128, 3, 0, 40, 8], device="cuda")
    x = torch.randn(int(counts.sum()), 256, device="cuda", dtype=torch.bfloat16, generator=gen)
    w = torch.randn(8, 512, 256, device="cuda", dtype=torch.bfloat16, generator=gen) / 16
    grouped = grouped_mm(x, w, counts, GemmImpl.AUTO)
    loop = grouped_mm(x, w, counts, GemmImpl.LOOP)
    assert (grouped.float() - loop.float()).abs().max().item() < 5e-2


def test_one_rank_dispatch_combine_is_the_weighted_sum_of_experts() -> None:
    gen = torch.Generator().manual_seed(1)
    placement = Placement.from_phy2log(torch.tensor([[3, 0, 1, 2, 0]]), 4)
    lp = LayerPlacement.of(placement, 0, 0, 1)
    hidden = torch.randn(6, 8, generator=gen)
    ids = torch.stack([torch.randperm(4, generator=gen)[:2] for _ in range(6)])
    weights = torch.rand(6, 2, generator=gen)
    experts = GroupedExperts(5, 8, 4)
    with torch.no_grad():
        experts.w13.normal_(generator=gen)
        experts.w2.normal_(generator=gen)
    handle = dispatch(hidden, ids, weights, lp, EPComm.single())
    assert handle.tokens_per_slot.tolist() == torch.bincount(handle.phys_ids.flatten(), minlength=5).tolist()
    pairs_out = experts(expert_inputs(handle), handle.tokens_per_slot)
    out = combine(reduce_expert_outputs(pairs_out, handle), handle)
    expected = torch.zeros(6, 8)
    for t in range(6):
        for k in range(2):
            slot = int(handle.phys_ids[t, k])
            one = experts(hidden[t : t + 1], torch.eye(5, dtype=torch.int64)[slot])
            expected[t] += weights[t, k] * one[0]
    assert torch.allclose(out, expected, atol=1e-5)
    with pytest.raises(DispatchError, match="expert_out has 3 rows, dispatch delivered 12 pairs"):
        reduce_expert_outputs(torch.zeros(3, 8), handle)
    with pytest.raises(DispatchError, match="expert_out has 3 rows, dispatch received 6"):
        combine(torch.zeros(3, 8), handle)
    with pytest.raises(DispatchError, match="placement is for rank 0/1, communicator is rank 1/2"):
        dispatch(hidden, ids, weights, lp, EPComm(1, 2, None, torch.device("cpu")))


@pytest.mark.gpu
def test_cuda_replica_choice_needs_no_host_sync_and_matches_the_cpu() -> None:
    ids = torch.tensor([[0, 1], [0, 1], [0, 1], [2, 5]])
    layer = LayerPlacement.of(PLACEMENT, 0, rank=0, num_ranks=2, device="cuda")
    ids_gpu = ids.cuda()  # a pageable host-to-device copy syncs; the choice itself must not
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_gpu = choose_replicas(ids_gpu, layer)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert on_gpu.cpu().tolist() == choose_replicas(ids, LayerPlacement.of(PLACEMENT, 0, 0, 2)).tolist()
