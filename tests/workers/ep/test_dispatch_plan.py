"""The pure parts of dispatch: send plans, announced counts, the expert-sorted layout, workspace."""

from __future__ import annotations

import pytest
import torch
from moeplane.workers.ep.comm import CommError, EPComm, Workspace
from moeplane.workers.ep.dispatch import (
    RoutingTables,
    _nonzero,
    _stable_argsort,
    count_sends,
    expert_layout,
    packed_row_bytes,
    plan_sends,
)

pytestmark = pytest.mark.unit

# 3 ranks x 2 slots: physical slot p lives on rank p // 2.
PHYS = torch.tensor([[0, 5], [1, 0], [4, 5], [2, 3]])


def test_tables_map_slots_to_counters_and_local_keys() -> None:
    t = RoutingTables.build(rank=1, num_ranks=3, slots_per_rank=2)
    # counts are [W, 1 + S] flattened: rank w's row starts at 3w, its slot s counter at 3w + 1 + s.
    assert t.count_pos.tolist() == [1, 2, 4, 5, 7, 8]
    assert t.local_key.tolist() == [2, 2, 0, 1, 2, 2]
    assert t.local_key.dtype == torch.int16


def test_send_plan_is_rank_major_token_ascending_with_each_token_once_per_rank() -> None:
    goes_to, counts = count_sends(PHYS, RoutingTables.build(0, 3, 2))
    assert goes_to.tolist() == [[True, True, False, False], [False, False, False, True],
                                [True, False, True, False]]
    # rows per rank, then pairs per slot on that rank
    assert counts.tolist() == [[2, 2, 1], [1, 1, 1], [2, 1, 2]]
    plan = plan_sends(goes_to, counts)
    assert plan.send_token_idx.tolist() == [0, 1, 3, 0, 2]
    assert plan.send_splits == (2, 1, 2)


def test_empty_batch_plans_nothing() -> None:
    goes_to, counts = count_sends(torch.empty(0, 2, dtype=torch.int64), RoutingTables.build(0, 3, 2))
    plan = plan_sends(goes_to, counts)
    assert counts.tolist() == [[0, 0, 0]] * 3
    assert plan.send_token_idx.shape == (0,) and plan.send_splits == (0, 0, 0)


def _reference_layout(phys: torch.Tensor, weight: torch.Tensor, rank: int, slots: int) -> list:
    pairs = [(int(p) - rank * slots, m, float(weight[m, k]))
             for m in range(phys.shape[0]) for k, p in enumerate(phys[m])
             if rank * slots <= int(p) < (rank + 1) * slots]
    return sorted(pairs, key=lambda e: e[0])  # sorted() is stable: rows stay in order


@pytest.mark.parametrize("rank", [0, 2])
def test_expert_layout_matches_a_per_pair_reference(rank: int) -> None:
    gen = torch.Generator().manual_seed(rank)
    world, slots, top_k = 3, 4, 3
    phys = torch.stack([torch.randperm(world * slots, generator=gen)[:top_k] for _ in range(40)])
    weight = torch.rand(40, top_k, generator=gen)
    ref = _reference_layout(phys, weight, rank, slots)
    tables = RoutingTables.build(rank, world, slots)
    # The receiver sees int32 slots inside its packed rows.
    layout = expert_layout(phys.to(torch.int32), weight, len(ref), tables)
    assert layout.pair_row.tolist() == [m for _, m, _ in ref]
    assert layout.pair_weight.tolist() == pytest.approx([w for _, _, w in ref])
    wide = RoutingTables(world, slots, tables.count_pos, tables.local_key.to(torch.int64))
    torch_sorted = expert_layout(phys, weight, len(ref), wide)  # the CUDA path's torch sort
    assert torch.equal(torch_sorted.pair_row, layout.pair_row)


def test_radix_and_torch_stable_sorts_agree_on_ties() -> None:
    keys = torch.randint(0, 5, (3000,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(_stable_argsort(keys.to(torch.int16)), _stable_argsort(keys))
    assert torch.equal(_stable_argsort(keys), torch.argsort(keys, stable=True))


def test_static_nonzero_equals_nonzero() -> None:
    mask = torch.rand(4, 50, generator=torch.Generator().manual_seed(4)) < 0.3
    count = int(mask.sum())
    assert torch.equal(_nonzero(mask, count), mask.nonzero())
    # the CUDA branch, run on the CPU
    assert torch.equal(torch.nonzero_static(mask, size=count), mask.nonzero())


def test_packed_rows_keep_hidden_and_metadata_aligned() -> None:
    assert packed_row_bytes(512, torch.float32, 4) == 2048 + 32
    assert packed_row_bytes(3, torch.bfloat16, 2) == 8 + 16  # 6 hidden bytes padded to 8
    assert packed_row_bytes(5, torch.float64, 1) == 40 + 8


def test_workspace_reuses_buffers_and_memoises_tables() -> None:
    ws = Workspace()
    a = ws.get("x", (4, 8), torch.float32, torch.device("cpu"))
    b = ws.get("x", (2, 3), torch.int16, torch.device("cpu"))
    assert a.data_ptr() == b.data_ptr() and b.shape == (2, 3)
    calls: list[int] = []
    assert ws.table("t", lambda: calls.append(1) or 7) == 7
    assert ws.table("t", lambda: calls.append(1) or 8) == 7
    assert calls == [1]


def test_count_exchange_wants_one_row_per_rank() -> None:
    comm = EPComm.single()
    counts = torch.tensor([[3, 1, 2]])
    assert torch.equal(comm.exchange_counts(counts), counts)
    with pytest.raises(CommError, match=r"one row per rank \(1\), got \(2, 3\)"):
        comm.start_count_exchange(torch.zeros(2, 3, dtype=torch.int64))
