"""The balancer's fast paths return what the slower ones they replace did: numpy sorts against
torch's (ties included), the sorted replica list, the vectorised `bin_floor`, the one-group-per-
node shortcut of the node map; and warm rebalances that the nudge settles meet its target."""

from __future__ import annotations

import pytest
import torch
from moeplane.workers.eplb.balanced import _stable_node_groups, balanced_placement
from moeplane.workers.eplb.nudge import nudge
from moeplane.workers.eplb.optimum import bin_floor
from moeplane.workers.eplb.packing import expand_replicas
from moeplane.workers.eplb.sorting import argsort_desc, sorted_desc, sorted_replicas
from moeplane.workers.eplb.types import EplbLayout
from moeplane.workers.eplb.warm import apply_relabel, greedy_match, node_homes

from .loads import drifted, zipf_load

pytestmark = pytest.mark.unit


def tie_heavy(shape: tuple[int, ...], gen: torch.Generator, levels: int) -> torch.Tensor:
    """float64 values drawn from `levels` distinct numbers (0 included): many ties per row."""
    return torch.randint(0, levels, shape, generator=gen).to(torch.float64) * 0.25


@pytest.mark.parametrize("levels", [2, 5, 1000])
def test_argsort_desc_is_torchs_stable_descending_argsort(levels: int) -> None:
    gen = torch.Generator().manual_seed(levels)
    for rows, cols in [(1, 1), (3, 7), (58, 288), (40, 1)]:
        w = tie_heavy((rows, cols), gen, levels)
        expected = torch.argsort(w, dim=-1, descending=True, stable=True)
        assert torch.equal(argsort_desc(w), expected)
        assert torch.equal(sorted_desc(w), w.sort(dim=-1, descending=True).values)


def test_argsort_desc_orders_infinities_like_torch() -> None:
    w = torch.tensor([[1.0, float("-inf"), 2.0, float("-inf"), 1.0, float("inf")]])
    assert torch.equal(argsort_desc(w), torch.argsort(w, dim=-1, descending=True, stable=True))
    assert torch.equal(argsort_desc(-w), torch.argsort(-w, dim=-1, descending=True, stable=True))


@pytest.mark.parametrize("num_slots_extra", [0, 1, 32, 100])
def test_sorted_replicas_is_expand_replicas(num_slots_extra: int) -> None:
    gen = torch.Generator().manual_seed(num_slots_extra)
    for levels in (3, 10_000):
        weight = tie_heavy((20, 64), gen, levels)
        counts = torch.ones(20, 64, dtype=torch.int64)
        if num_slots_extra:
            extra = torch.randint(0, 64, (20, num_slots_extra), generator=gen)
            counts.scatter_add_(1, extra, torch.ones_like(extra))
        ids, w = sorted_replicas(weight, counts)
        ref_ids, ref_w = expand_replicas(weight, counts)
        assert torch.equal(ids, ref_ids)
        assert torch.equal(w, ref_w)


def loop_floor(w: torch.Tensor, per_bin: int) -> torch.Tensor:
    """`bin_floor`'s definition, one m at a time in float64."""
    w = w.to(torch.float64)
    num_bins = w.shape[1] // per_bin
    floor = w.sum(-1) / num_bins
    for m in range(per_bin):
        top = w[:, m * num_bins - m : m * num_bins + 1].sum(-1)
        rest = per_bin - m - 1
        light = w.flip(-1)[:, :rest].sum(-1)
        floor = torch.maximum(floor, top + light)
    return floor


@pytest.mark.parametrize("per_bin", [1, 2, 4, 9])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bin_floor_matches_its_definition(per_bin: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(per_bin)
    w = (
        (torch.rand(30, per_bin * 16, generator=gen, dtype=torch.float64) ** 4 * 1e6)
        .sort(dim=-1, descending=True)
        .values
    )
    got = bin_floor(w.to(dtype), per_bin)
    assert got.dtype == dtype and got.shape == (30,)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(got.double(), loop_floor(w, per_bin), rtol=tol, atol=0)


def test_one_group_per_node_keeps_each_group_at_home_as_the_general_relabel_does() -> None:
    gen = torch.Generator().manual_seed(3)
    num_layers, nodes, group_size = 12, 8, 4
    num_experts = nodes * group_size
    load = torch.rand(num_layers, num_experts, generator=gen, dtype=torch.float64)
    previous = torch.arange(num_experts).repeat(num_layers, 1)
    for layer in range(num_layers):  # a few replicas stray off their group's node
        for _ in range(layer % 3):
            i, j = torch.randint(0, num_experts, (2,), generator=gen).tolist()
            previous[layer, [i, j]] = previous[layer, [j, i]]
    fresh = torch.arange(nodes).view(1, nodes, 1).repeat(num_layers, 1, 1)
    got = _stable_node_groups(load, fresh, previous, nodes, nodes)
    on_node, home, _ = node_homes(previous, nodes, nodes, group_size)
    score = on_node.gather(1, fresh.flatten(1).unsqueeze(-1).expand(-1, -1, nodes))
    assert torch.equal(got, apply_relabel(fresh, greedy_match(score)))
    assert torch.equal(got.flatten(1), torch.argsort(home, dim=-1))


@pytest.mark.parametrize("seed", [6, 7])
def test_the_nudge_leaves_no_layer_just_short_of_its_target(seed: int) -> None:
    # EP32 over 4 nodes, 288 slots, placed globally; then a drifted load. The float32 searches
    # stop within 1e-5 of what they aim for: aimed at the target itself, some layers ended a
    # hair above it and took the whole slow path. A layer left undone must be really stuck.
    layout = EplbLayout(
        num_layers=58, num_logical=256, num_physical=288, num_groups=8, num_nodes=4, num_gpus=32
    )
    load = zipf_load(58, 256, 1.0, seed=5)
    start = balanced_placement(load, layout, None, locality_slack=0.0)
    moved_load = drifted(load, 0.1, seed=seed)
    slack = 5e-3
    out, done = nudge(moved_load, start, layout, slack)
    assert int(done.sum()) >= 40
    counts = torch.zeros_like(moved_load, dtype=torch.int64).scatter_add_(1, out, torch.ones_like(out))
    peak = (moved_load / counts).gather(1, out).view(58, 32, -1).sum(-1).amax(-1)
    target = moved_load.sum(-1) / 32 * (1 + slack)
    assert bool((peak[done] <= target[done] * (1 + 1e-9)).all())
    assert not bool((~done & (peak > target) & (peak <= target * (1 + 2e-5))).any())
    # Replica counts are the previous ones: the nudge only swaps.
    assert torch.equal(counts, torch.zeros_like(counts).scatter_add_(1, start, torch.ones_like(start)))
