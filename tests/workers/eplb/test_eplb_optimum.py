"""Ceilings on balancedness: no placement beats them (random and exhaustive), constructed loads
meet them, and the policies meet them where the benchmark says they do."""

from __future__ import annotations

import itertools

import pytest
import torch
from moeplane.api.enums import EplbAlgorithm
from moeplane.workers.eplb.metrics import gpu_load, moved_slots, placement_balancedness
from moeplane.workers.eplb.optimum import balancedness_ceiling, peak_floor
from moeplane.workers.eplb.rebalance import rebalance
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement

from .loads import drifted, zipf_load

pytestmark = pytest.mark.unit


def random_placement(num_experts: int, num_physical: int, gen: torch.Generator) -> torch.Tensor:
    """[R] int64: every expert once, the redundant slots to random experts, shuffled."""
    extra = torch.randint(0, num_experts, (num_physical - num_experts,), generator=gen)
    slots = torch.cat([torch.arange(num_experts), extra])
    return slots[torch.randperm(num_physical, generator=gen)]


def pair_optimum(load: list[float], num_slots: int) -> float:
    """Exhaustive: the least hottest GPU over every replica count (two slots per GPU, each
    count pairing heaviest with lightest, which is optimal for fixed counts)."""
    best = float("inf")
    num_experts = len(load)
    for extra in itertools.combinations_with_replacement(range(num_experts), num_slots - num_experts):
        counts = [1] * num_experts
        for e in extra:
            counts[e] += 1
        w = sorted((x / c for x, c in zip(load, counts, strict=True) for _ in range(c)), reverse=True)
        half = len(w) // 2
        best = min(best, max(w[i] + w[-1 - i] for i in range(half)))
    return best


def partition_optimum(load: list[float], per_gpu: int) -> float:
    """Exhaustive: the least hottest GPU over every split into groups of `per_gpu` (R = E)."""

    def solve(rest: tuple[float, ...]) -> float:
        if not rest:
            return 0.0
        first, others = rest[0], rest[1:]
        return min(
            max(first + sum(c), solve(tuple(x for i, x in enumerate(others) if i not in idx)))
            for idx in itertools.combinations(range(len(others)), per_gpu - 1)
            for c in [[others[i] for i in idx]]
        )

    return solve(tuple(load))


@pytest.mark.parametrize(
    ("num_experts", "num_physical", "num_gpus"),
    [(16, 16, 4), (16, 24, 12), (16, 24, 8), (12, 18, 3), (12, 12, 12)],
)
def test_no_random_placement_beats_the_ceiling(num_experts: int, num_physical: int, num_gpus: int) -> None:
    gen = torch.Generator().manual_seed(num_physical * 7 + num_gpus)
    load = torch.cat([zipf_load(4, num_experts, s, seed=3) for s in (0.0, 0.8, 1.6)])
    ceiling = balancedness_ceiling(load, num_physical, num_gpus)
    assert bool((ceiling <= 1.0).all()) and bool((ceiling > 0).all())
    for _ in range(60):
        phy2log = torch.stack(
            [random_placement(num_experts, num_physical, gen) for _ in range(load.shape[0])]
        )
        placement = Placement.from_phy2log(phy2log, num_experts)
        bal = placement_balancedness(load, placement, num_gpus)
        assert bool((bal <= ceiling * (1 + 1e-12)).all())


@pytest.mark.parametrize("seed", range(6))
def test_the_pair_floor_is_below_the_exhaustive_optimum(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    load = (torch.rand(1, 5, generator=gen, dtype=torch.float64) ** 3 * 1000).round() + 1
    best = pair_optimum(load[0].tolist(), 10)
    floor = float(peak_floor(load, 10, 5)[0])
    assert floor <= best * (1 + 1e-12)
    # Every policy's placement is a valid one: at or above the exhaustive optimum.
    for policy in (EplbAlgorithm.GLOBAL, EplbAlgorithm.AUTO):
        peak = float(gpu_load(load, rebalance(load, 10, 1, 1, 5, policy), 5).amax())
        assert peak >= best * (1 - 1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_the_partition_floor_is_below_the_exhaustive_optimum(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    load = (torch.rand(1, 9, generator=gen, dtype=torch.float64) ** 4 * 1000).round()
    best = partition_optimum(load[0].tolist(), 3)
    assert float(peak_floor(load, 9, 3)[0]) <= best * (1 + 1e-12)


def test_constructed_loads_meet_the_ceiling() -> None:
    # No redundancy, one giant: the giant with the coldest experts is optimal and the bound says so.
    giant = torch.tensor([[1000.0, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1, 1]])
    assert float(peak_floor(giant, 12, 4)[0]) == 1000 + 1 + 1
    assert partition_optimum(giant[0].tolist(), 3) == 1002
    # Two slots per GPU: the hot expert's three replicas each meet a cold expert, and the
    # hottest-plus-lightest bound is exact.
    skewed = torch.tensor([[90.0, 3, 3, 3]])
    assert float(peak_floor(skewed, 6, 3)[0]) == pair_optimum(skewed[0].tolist(), 6) == 33
    # Where several hot replicas need distinct light partners it is a bound, not the optimum.
    spread = torch.tensor([[600.0, 40, 30, 2]])
    assert float(peak_floor(spread, 8, 4)[0]) < pair_optimum(spread[0].tolist(), 8)
    # An even load splits perfectly.
    assert float(balancedness_ceiling(torch.full((1, 8), 5.0), 8, 4)[0]) == 1.0


def test_ours_meets_the_ceiling_without_redundancy_where_locality_alone_does_not() -> None:
    # EP16 over 4 nodes, 64 experts in 4 groups: the hot expert's group holds no very cold
    # expert, so node-local packing cannot give it the layer's coldest partners.
    load = zipf_load(6, 64, 1.2, seed=5)
    floor = peak_floor(load, 64, 16)
    ours = gpu_load(load, rebalance(load, 64, 4, 4, 16), 16).amax(-1)
    deepseek = gpu_load(load, rebalance(load, 64, 4, 4, 16, EplbAlgorithm.HIERARCHICAL), 16).amax(-1)
    assert torch.allclose(ours, floor, rtol=1e-12)
    assert bool((deepseek >= ours * (1 - 1e-12)).all())
    strict = gpu_load(load, rebalance(load, 64, 4, 4, 16, locality_slack=1.0), 16).amax(-1)
    assert bool((strict >= ours * (1 - 1e-12)).all())


def test_bad_layouts_name_the_numbers() -> None:
    with pytest.raises(EplbError, match=r"num_physical \(10\) must be >= the 12 experts"):
        peak_floor(torch.ones(1, 12), 10, 5)
    with pytest.raises(EplbError, match=r"multiple of num_gpus \(5\)"):
        peak_floor(torch.ones(1, 12), 16, 5)


def test_a_drifting_load_without_redundancy_stays_optimal_and_moves_little() -> None:
    # EP16 over 4 nodes, 64 experts in 4 groups, no redundant slots: every rebalance either
    # reaches the tight bound from the current placement with a few stray swaps, or re-places.
    load = zipf_load(6, 64, 1.0, seed=8)
    placement = rebalance(load, 64, 4, 4, 16)
    for step in range(3):
        load = drifted(load, 0.1, seed=20 + step)
        new = rebalance(load, 64, 4, 4, 16, previous=placement)
        peak = gpu_load(load, new, 16).amax(-1)
        assert torch.allclose(peak, peak_floor(load, 64, 16), rtol=1e-12)
        deepseek = rebalance(load, 64, 4, 4, 16, EplbAlgorithm.HIERARCHICAL)
        assert int(moved_slots(placement, new, 16).sum()) * 4 <= int(
            moved_slots(Placement.identity(6, 64, 64), deepseek, 16).sum()
        )
        placement = new
