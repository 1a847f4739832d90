"""The planning-time fast paths give what the slow paths give: top-k replica counts against the
greedy loop, the scatter-based round packing against a plain reference, the swap search with a
known floor, the fresh plan's skipped search, and the warm start's no-repair shortcut."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from moeplane.workers.eplb.balanced import _fresh_bins, _search_steps
from moeplane.workers.eplb.counts import top_counts
from moeplane.workers.eplb.optimum import bin_floor
from moeplane.workers.eplb.packing import (
    Bins,
    expand_replicas,
    replica_counts,
    round_pack,
    swap_search,
)
from moeplane.workers.eplb.warm import repair_bins, warm_bins

from .loads import zipf_load

pytestmark = pytest.mark.unit


def ref_round_pack(w: list[float], num_bins: int) -> list[list[int]]:
    """Round-wise LPT with giants, one domain, in plain Python (see `round_pack`)."""
    n = len(w)
    per_bin = n // num_bins
    mean = sum(w) / num_bins
    held: list[list[int]] = [[] for _ in range(num_bins)]
    loads = [0.0] * num_bins
    giant = [False] * num_bins
    head, tail = 0, n
    for r in range(per_bin):
        rest = per_bin - r
        if r:
            lightest = sum(w[tail - rest : tail])
            new = [b for b in range(num_bins) if not giant[b] and loads[b] + lightest > mean]
            for b in sorted(new, key=lambda b: (-loads[b], b)):  # heaviest giant: lightest items
                giant[b] = True
                held[b] += range(tail - rest, tail)
                loads[b] += sum(w[tail - rest : tail])
                tail -= rest
        for b in sorted((b for b in range(num_bins) if not giant[b]), key=lambda b: (loads[b], b)):
            held[b].append(head)
            loads[b] += w[head]
            head += 1
    return held


def domains(num_domains: int, num_items: int, seed: int) -> torch.Tensor:
    """[D, n] float64 item loads sorted descending, from flat to very skewed."""
    gen = torch.Generator().manual_seed(seed)
    power = torch.linspace(0.5, 8.0, num_domains, dtype=torch.float64).view(-1, 1)
    w = (torch.rand(num_domains, num_items, generator=gen, dtype=torch.float64) ** power * 1000).round()
    return w.sort(dim=-1, descending=True).values


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 4).flatmap(
        lambda d: st.integers(2, 20).flatmap(
            lambda e: st.lists(st.lists(st.integers(0, 1000), min_size=e, max_size=e), min_size=d, max_size=d)
        )
    ),
    extra=st.integers(0, 24),
)
def test_top_counts_reach_the_greedy_hottest_replica(rows: list[list[int]], extra: int) -> None:
    weight = torch.tensor(rows, dtype=torch.float64)
    num_slots = weight.shape[1] + extra
    fast, greedy = top_counts(weight, num_slots), replica_counts(weight, num_slots)
    assert bool((fast >= 1).all()) and bool((fast.sum(-1) == num_slots).all())
    assert torch.allclose((weight / fast).amax(-1), (weight / greedy).amax(-1), rtol=1e-12)


@pytest.mark.parametrize(
    ("num_items", "num_bins"), [(12, 3), (16, 4), (18, 9), (72, 8), (36, 4), (8, 8), (6, 1)]
)
def test_round_pack_matches_the_plain_reference(num_items: int, num_bins: int) -> None:
    w = domains(12, num_items, seed=num_items + num_bins)
    held = round_pack(w, num_bins)
    for d in range(w.shape[0]):
        assert held[d].tolist() == ref_round_pack(w[d].tolist(), num_bins)


@pytest.mark.parametrize(("num_items", "num_bins"), [(72, 8), (36, 4), (96, 32), (32, 8)])
def test_swap_search_with_a_known_floor_matches_the_sorting_one(num_items: int, num_bins: int) -> None:
    w = domains(16, num_items, seed=3)
    ids = torch.arange(num_items).expand(16, -1)
    start = Bins.from_items(ids, w, round_pack(w, num_bins))
    floor = bin_floor(w, num_items // num_bins)
    for good_enough in (0.0, 2e-3):
        slow = swap_search(start, _search_steps(num_bins), good_enough=good_enough)
        fast = swap_search(start, _search_steps(num_bins), good_enough=good_enough, floor=floor)
        assert torch.equal(slow.ids, fast.ids)


@pytest.mark.parametrize(("num_slots", "num_bins", "nodes"), [(72, 8, 4), (64, 16, 4), (288, 32, 1)])
@pytest.mark.parametrize("s", [0.6, 1.4])
def test_the_fresh_plan_skips_only_searches_that_cannot_gain(
    num_slots: int, num_bins: int, nodes: int, s: float
) -> None:
    load = zipf_load(8 * nodes, 256 // (4 if num_slots < 288 else 1), s, seed=9)
    counts = top_counts(load, num_slots)
    got = _fresh_bins(load, counts, num_bins, nodes)
    ids, w = expand_replicas(load, counts)
    searched = Bins.from_items(ids, w, round_pack(w, num_bins))
    searched = swap_search(searched, _search_steps(num_bins), domains_per_layer=nodes, good_enough=2e-3)
    layer_peak = got.loads().amax(-1).view(-1, nodes).amax(-1)
    ref_peak = searched.loads().amax(-1).view(-1, nodes).amax(-1)
    # The pair rounds (wide domains) may reach a different placement; never a hotter one by more
    # than the search's own stopping slack.
    assert bool((layer_peak <= ref_peak * (1 + 2e-3) + 1e-9).all())


@pytest.mark.parametrize("seed", range(4))
def test_the_warm_start_shortcut_is_the_repair_of_an_intact_placement(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    load = zipf_load(6, 32, 1.0, seed=seed)
    counts = top_counts(load, 40)
    ids = expand_replicas(load, counts)[0]
    prev = torch.stack([row[torch.randperm(40, generator=gen)] for row in ids]).view(6, 8, 5)
    fast, slow = warm_bins(prev, load, counts), repair_bins(prev, load, counts)
    assert torch.equal(fast.ids, slow.ids) and torch.equal(fast.w, slow.w)
    # Changed counts take the repair path.
    other = top_counts(load * torch.rand(load.shape, generator=gen, dtype=torch.float64), 40)
    assert torch.equal(warm_bins(prev, load, other).ids, repair_bins(prev, load, other).ids)
