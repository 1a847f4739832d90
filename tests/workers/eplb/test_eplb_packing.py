"""The vectorised building blocks against plain-Python references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from moeplane.workers.eplb.packing import (
    Bins,
    expand_replicas,
    lpt_pack,
    replica_counts,
    round_pack,
    stable_slots,
    swap_search,
)

pytestmark = pytest.mark.unit


def ref_replica_counts(weight: list[float], num_slots: int) -> list[int]:
    counts = [1] * len(weight)
    for _ in range(num_slots - len(weight)):
        best = max(range(len(weight)), key=lambda e: (weight[e] / counts[e], -e))
        counts[best] += 1
    return counts


def ref_lpt(w: list[float], num_bins: int) -> list[list[int]]:
    per_bin = len(w) // num_bins
    loads, bins = [0.0] * num_bins, [[] for _ in range(num_bins)]
    for item, weight in enumerate(w):
        open_bins = [b for b in range(num_bins) if len(bins[b]) < per_bin]
        target = min(open_bins, key=lambda b: (loads[b], b))
        bins[target].append(item)
        loads[target] += weight
    return bins


def loads_strategy(max_domains: int = 3, max_items: int = 24):
    return st.integers(1, max_domains).flatmap(
        lambda d: st.integers(2, max_items).flatmap(
            lambda n: st.lists(st.lists(st.integers(0, 1000), min_size=n, max_size=n), min_size=d, max_size=d)
        )
    )


@settings(max_examples=60, deadline=None)
@given(rows=loads_strategy(), extra=st.integers(0, 10))
def test_replica_counts_match_the_greedy_reference(rows: list[list[int]], extra: int) -> None:
    weight = torch.tensor(rows, dtype=torch.float64)
    num_slots = weight.shape[1] + extra
    counts = replica_counts(weight, num_slots)
    for d, row in enumerate(rows):
        ref = ref_replica_counts([float(x) for x in row], num_slots)
        # Ties may break differently; the hottest replica must be the same.
        got_peak = max(x / c for x, c in zip(row, counts[d].tolist(), strict=True))
        ref_peak = max(x / c for x, c in zip(row, ref, strict=True))
        assert got_peak == pytest.approx(ref_peak)
    assert bool((counts.sum(-1) == num_slots).all()) and bool((counts >= 1).all())


@settings(max_examples=60, deadline=None)
@given(rows=loads_strategy(), num_bins=st.integers(1, 6))
def test_lpt_pack_matches_the_sequential_reference(rows: list[list[int]], num_bins: int) -> None:
    n = len(rows[0]) // num_bins * num_bins
    if n == 0:
        return
    w = torch.tensor([sorted(r[:n], reverse=True) for r in rows], dtype=torch.float64)
    held = lpt_pack(w, num_bins)
    for d in range(w.shape[0]):
        ref = ref_lpt(w[d].tolist(), num_bins)
        assert sorted(sorted(b) for b in held[d].tolist()) == sorted(sorted(b) for b in ref)


@settings(max_examples=60, deadline=None)
@given(rows=loads_strategy(), num_bins=st.integers(1, 6), extra=st.integers(0, 6))
def test_round_pack_and_swap_search_keep_every_item_and_never_heat_the_peak(
    rows: list[list[int]], num_bins: int, extra: int
) -> None:
    weight = torch.tensor(rows, dtype=torch.float64) + 1
    num_experts = weight.shape[1]
    num_slots = -(-(num_experts + extra) // num_bins) * num_bins
    counts = replica_counts(weight, num_slots)
    ids, w = expand_replicas(weight, counts)
    assert bool((w[:, :-1] >= w[:, 1:]).all()), "replicas must come heaviest first"
    start = Bins.from_items(ids, w, round_pack(w, num_bins))
    found = swap_search(start, max_steps=50)
    for bins in (start, found):
        assert bins.ids.shape == (weight.shape[0], num_bins, num_slots // num_bins)
        per_expert = torch.zeros_like(counts).scatter_add_(
            1, bins.ids.flatten(1), torch.ones_like(bins.ids.flatten(1))
        )
        assert torch.equal(per_expert, counts)
        assert torch.allclose(bins.w, (weight / counts).gather(1, bins.ids.flatten(1)).view_as(bins.w))
    assert bool((found.loads().amax(-1) <= start.loads().amax(-1) * (1 + 1e-9)).all())


def test_round_pack_pairs_heaviest_with_lightest_for_two_per_bin() -> None:
    w = torch.tensor([[9.0, 7.0, 5.0, 4.0, 2.0, 1.0]])
    held = round_pack(w, 3)
    pairs = sorted(sorted(p) for p in held[0].tolist())
    assert pairs == [[0, 5], [1, 4], [2, 3]]


def test_swap_search_finds_the_obvious_swap() -> None:
    # Bins {10, 9} and {1, 2}: swapping 9 with 2 gives {10, 1} and {9, 2}, both 11.
    ids = torch.tensor([[[0, 1], [2, 3]]])
    w = torch.tensor([[[10.0, 9.0], [1.0, 2.0]]], dtype=torch.float64)
    found = swap_search(Bins(ids, w), max_steps=5)
    assert found.loads().tolist() == [[11.0, 11.0]]
    assert sorted(found.ids.flatten().tolist()) == [0, 1, 2, 3]


def test_swap_search_stops_at_the_target() -> None:
    ids = torch.arange(8).view(1, 4, 2)
    w = torch.tensor([[[8.0, 7.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    satisfied = swap_search(Bins(ids, w), max_steps=10, target=torch.tensor([15.0], dtype=torch.float64))
    assert torch.equal(satisfied.ids, ids), "a domain already at its target is left alone"
    found = swap_search(Bins(ids, w), max_steps=10, target=torch.tensor([14.0], dtype=torch.float64))
    assert float(found.loads().amax()) <= 14.0
    assert int((found.ids != ids).sum()) == 2, "one swap reaches the target"


@settings(max_examples=80, deadline=None)
@given(
    data=st.integers(1, 5).flatmap(
        lambda k: st.tuples(
            st.lists(st.lists(st.integers(0, 4), min_size=k, max_size=k), min_size=1, max_size=4),
            st.lists(st.lists(st.integers(-1, 4), min_size=k, max_size=k), min_size=1, max_size=4),
        )
    )
)
def test_stable_slots_keeps_shared_experts_in_place(data: tuple[list[list[int]], list[list[int]]]) -> None:
    new_rows, old_rows = data
    bins = min(len(new_rows), len(old_rows))
    ids = torch.tensor([new_rows[:bins]])
    prev = torch.tensor([old_rows[:bins]])
    out = stable_slots(ids, prev)
    for b in range(bins):
        new, old, got = new_rows[b], old_rows[b], out[0, b].tolist()
        assert sorted(got) == sorted(new)
        # Every expert present in both keeps min(count_new, count_old) of its old positions.
        for e in set(new) & set(old):
            kept = sum(1 for p in range(len(old)) if old[p] == e and got[p] == e)
            assert kept == min(new.count(e), old.count(e))
