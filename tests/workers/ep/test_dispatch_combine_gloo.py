"""dispatch -> experts -> combine over a real 2-rank gloo group, against a per-token reference.

Each physical slot's "expert" scales its rows by (logical expert + 1), so the result tells whether
every pair reached the right slot with the right weight. Cases: fp32 and bf16 hidden states,
redundant experts, and a rank with no tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from moeplane.workers.ep.dispatch import combine, dispatch, expert_inputs, reduce_expert_outputs
from moeplane.workers.ep.launch import RankContext, spawn_ranks
from moeplane.workers.ep.replicas import LayerPlacement
from moeplane.workers.placement import Placement

pytestmark = pytest.mark.integration

E, K, H = 5, 3, 6
# 2 ranks x 4 slots; experts 0 and 3 replicated across the ranks.
PHY2LOG = torch.tensor([[0, 1, 2, 3, 4, 0, 3, 3]])
TOKENS = (7, 0)  # rank 1 is idle


def _inputs(rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(10 + rank)
    n = TOKENS[rank]
    ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(n)]) if n else torch.empty(0, K)
    return (torch.randn(n, H, generator=gen).to(dtype), ids.to(torch.int64), torch.rand(n, K, generator=gen))


def _run_rank(ctx: RankContext) -> dict[tuple[torch.dtype, str], torch.Tensor]:
    comm = ctx.comm("cpu")
    try:
        placement = LayerPlacement.of(Placement.from_phy2log(PHY2LOG, E), 0, ctx.rank, 2)
        out = {}
        for dtype in (torch.float32, torch.bfloat16):
            hidden, ids, weights = _inputs(ctx.rank, dtype)
            for step in range(2):  # the second step reuses the workspace buffers
                handle = dispatch(hidden, ids, weights, placement, comm)
                slot_of_pair = torch.repeat_interleave(torch.arange(4), handle.tokens_per_slot)
                scale = (placement.local_experts[slot_of_pair] + 1).to(dtype).unsqueeze(1)
                rows = reduce_expert_outputs(expert_inputs(handle) * scale, handle)
                out[dtype, f"step{step}"] = combine(rows, handle)
            out[dtype, "tokens_per_slot"] = handle.tokens_per_slot
        return out
    finally:
        comm.close()


@pytest.fixture(scope="module")
def rank_outputs() -> list[dict[tuple[torch.dtype, str], torch.Tensor]]:
    # The spawned ranks import `_run_rank` from this file as tests.workers.ep.<module>.
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(Path(__file__).resolve().parents[3]))
        return spawn_ranks(_run_rank, 2, (), timeout_s=120, collective_timeout_s=60)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_two_rank_dispatch_combine_matches_reference(rank_outputs, dtype: torch.dtype) -> None:
    hidden, ids, weights = _inputs(0, dtype)
    expected = ((ids + 1).float() * weights).sum(1, keepdim=True) * hidden.float()
    # bf16: the expert's product and both sums round to bf16 once each (fp32 accumulation)
    tol = {"rtol": 0.0, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 1e-2}
    for step in ("step0", "step1"):
        assert rank_outputs[0][dtype, step].dtype == dtype
        torch.testing.assert_close(rank_outputs[0][dtype, step].float(), expected, **tol)
        assert rank_outputs[1][dtype, step].shape == (0, H)
    # every (token, k) pair was computed exactly once, somewhere
    assert sum(int(o[dtype, "tokens_per_slot"].sum()) for o in rank_outputs) == TOKENS[0] * K
