"""rebalance(): valid placements, the locality contract, ours against DeepSeek's, and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from moeplane.api.enums import EplbAlgorithm
from moeplane.workers.eplb.balanced import _WARM_SLACK as WARM_SLACK
from moeplane.workers.eplb.metrics import balancedness_bound, moved_slots, placement_balancedness
from moeplane.workers.eplb.nudge import STRAY_SWAPS
from moeplane.workers.eplb.rebalance import rebalance
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement

from .loads import drifted, zipf_load

pytestmark = pytest.mark.unit

# (num_physical, num_groups, num_nodes, num_gpus) over 64 experts: DeepSeek's shapes, scaled down.
LAYOUTS = {
    "hier-4nodes": (72, 8, 4, 8),  # prefill-like: 9 slots per GPU, groups pinned to nodes
    "global-wide": (72, 8, 6, 36),  # decode-like: 6 nodes do not divide 8 groups -> global
    "no-redundant": (64, 8, 8, 16),  # EP16 over 8 nodes, 4 slots per GPU
}


def assert_valid(placement: Placement, load: torch.Tensor, num_physical: int) -> None:
    num_layers, num_experts = load.shape
    assert placement.phy2log.shape == (num_layers, num_physical)
    assert int(placement.phy2log.min()) >= 0 and int(placement.phy2log.max()) < num_experts
    assert bool((placement.logcnt >= 1).all())
    assert bool((placement.logcnt.sum(-1) == num_physical).all())
    rebuilt = Placement.from_phy2log(placement.phy2log, num_experts)
    assert torch.equal(rebuilt.log2phy, placement.log2phy)


def off_node_loads(placement: Placement, load: torch.Tensor, num_groups: int, num_nodes: int) -> list[float]:
    """Per-replica loads of replicas outside their group's home node (the node holding most of
    the group's replicas), over all layers."""
    group = placement.phy2log // (placement.num_logical // num_groups)
    node = (torch.arange(placement.num_physical) // (placement.num_physical // num_nodes)).expand_as(group)
    homes = torch.zeros(placement.num_layers, num_groups * num_nodes, dtype=torch.int64)
    homes.scatter_add_(1, group * num_nodes + node, torch.ones_like(group))
    home = homes.view(placement.num_layers, num_groups, num_nodes).argmax(-1).gather(1, group)
    per_replica = (load / placement.logcnt).gather(1, placement.phy2log)
    return per_replica[home != node].tolist()


def groups_stay_on_nodes(placement: Placement, num_groups: int, num_nodes: int) -> bool:
    group = placement.phy2log // (placement.num_logical // num_groups)
    node = torch.arange(placement.num_physical) // (placement.num_physical // num_nodes)
    homes = torch.zeros(placement.num_layers, num_groups, num_nodes, dtype=torch.int64)
    homes.view(placement.num_layers, -1).scatter_add_(1, group * num_nodes + node, torch.ones_like(group))
    return bool(((homes > 0).sum(-1) == 1).all())


@pytest.mark.parametrize("policy", list(EplbAlgorithm))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_policy_returns_a_valid_placement(policy: EplbAlgorithm, layout: str) -> None:
    num_physical, groups, nodes, gpus = LAYOUTS[layout]
    load = zipf_load(6, 64, 1.0, seed=1)
    if policy is EplbAlgorithm.HIERARCHICAL and groups % nodes:
        with pytest.raises(EplbError, match="multiple of num_nodes"):
            rebalance(load, num_physical, groups, nodes, gpus, policy)
        return
    placement = rebalance(load, num_physical, groups, nodes, gpus, policy, locality_slack=1.0)
    assert_valid(placement, load, num_physical)
    assert placement.version == 0
    if groups % nodes == 0 and policy is not EplbAlgorithm.GLOBAL:
        assert groups_stay_on_nodes(placement, groups, nodes)


def test_layers_give_up_node_locality_only_when_it_costs_more_than_the_slack() -> None:
    mild = zipf_load(1, 64, 0.1, seed=4)[0]
    hot_group = mild.clone()
    hot_group[:8] *= 20  # group 0 alone outweighs the other seven: its node would be the bottleneck
    load = torch.stack([mild, hot_group])
    placement = rebalance(load, 72, 8, 4, 8)
    per_layer = [Placement.from_phy2log(placement.phy2log[i : i + 1], 64) for i in range(2)]
    # The mild layer stays local but for a few cold replicas traded across nodes.
    strays = off_node_loads(per_layer[0], load[:1], 8, 4)
    assert len(strays) <= 2 * STRAY_SWAPS
    assert all(w <= float(load[0].sum()) / 72 for w in strays)
    assert not groups_stay_on_nodes(per_layer[1], 8, 4)
    strict = rebalance(load, 72, 8, 4, 8, locality_slack=1.0)
    assert groups_stay_on_nodes(strict, 8, 4)
    bal = placement_balancedness(load, placement, 8)
    assert float(bal[1]) > float(placement_balancedness(load, strict, 8)[1]) * 1.5
    with pytest.raises(EplbError, match=r"locality_slack must lie in \[0, 1\], got 2.0"):
        rebalance(load, 72, 8, 4, 8, locality_slack=2.0)


@pytest.mark.parametrize("s", [0.6, 1.0, 1.4])
def test_ours_is_at_least_as_balanced_as_deepseek(s: float) -> None:
    load = zipf_load(12, 64, s, seed=7)
    for layout, (num_physical, groups, nodes, gpus) in LAYOUTS.items():
        baseline = EplbAlgorithm.HIERARCHICAL if groups % nodes == 0 else EplbAlgorithm.GLOBAL
        ours = placement_balancedness(load, rebalance(load, num_physical, groups, nodes, gpus), gpus)
        theirs = placement_balancedness(
            load, rebalance(load, num_physical, groups, nodes, gpus, baseline), gpus
        )
        assert float(ours.mean()) >= float(theirs.mean()) - 1e-12, layout
        assert float(ours.min()) >= float(theirs.min()) - 1e-12, layout
        assert bool((ours <= balancedness_bound(load, num_physical, gpus) + 1e-12).all())


def test_ours_beats_lpt_where_packing_is_hard() -> None:
    # Nine slots per GPU: LPT leaves slack that the swap search removes.
    load = zipf_load(16, 256, 1.0, seed=3)
    ours = placement_balancedness(load, rebalance(load, 288, 8, 4, 32), 32)
    theirs = placement_balancedness(load, rebalance(load, 288, 8, 4, 32, EplbAlgorithm.HIERARCHICAL), 32)
    assert float(ours.mean()) > float(theirs.mean())


def test_an_unchanged_load_moves_nothing_and_bumps_the_version() -> None:
    load = zipf_load(8, 64, 1.0, seed=2)
    for num_physical, groups, nodes, gpus in LAYOUTS.values():
        first = rebalance(load, num_physical, groups, nodes, gpus)
        again = rebalance(load, num_physical, groups, nodes, gpus, previous=first)
        assert again.version == first.version + 1
        assert int(moved_slots(first, again, gpus).sum()) == 0
        assert torch.equal(again.phy2log, first.phy2log)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_drifting_load_moves_far_fewer_weights_than_deepseek(layout: str) -> None:
    num_physical, groups, nodes, gpus = LAYOUTS[layout]
    baseline = EplbAlgorithm.HIERARCHICAL if groups % nodes == 0 else EplbAlgorithm.GLOBAL
    load = zipf_load(12, 64, 1.0, seed=5)
    ours_prev = rebalance(load, num_physical, groups, nodes, gpus)
    base_prev = rebalance(load, num_physical, groups, nodes, gpus, baseline)
    ours_moved = base_moved = 0
    for step in range(3):
        load = drifted(load, 0.1, seed=100 + step)
        ours = rebalance(load, num_physical, groups, nodes, gpus, previous=ours_prev)
        base = rebalance(load, num_physical, groups, nodes, gpus, baseline, previous=base_prev)
        assert_valid(ours, load, num_physical)
        ours_bal = placement_balancedness(load, ours, gpus)
        base_bal = placement_balancedness(load, base, gpus)
        assert float(ours_bal.mean()) >= float(base_bal.mean()) - 1e-12
        ours_moved += int(moved_slots(ours_prev, ours, gpus).sum())
        base_moved += int(moved_slots(base_prev, base, gpus).sum())
        ours_prev, base_prev = ours, base
    assert ours_moved * 2 <= base_moved, (ours_moved, base_moved)


def test_previous_must_match_the_layout() -> None:
    load = zipf_load(4, 64, 1.0, seed=0)
    other = rebalance(zipf_load(4, 64, 1.0, seed=0), 128, 8, 4, 8)
    with pytest.raises(EplbError, match=r"previous placement is \(4, 128\).*pass previous=None"):
        rebalance(load, 72, 8, 4, 8, previous=other)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_physical": 60}, r"num_physical \(60\) must be >= the 64 logical experts"),
        ({"num_physical": 70}, r"num_physical \(70\) must be a multiple of num_gpus \(8\)"),
        ({"num_nodes": 3}, r"num_gpus \(8\) must be a multiple of num_nodes \(3\)"),
        ({"num_groups": 5}, r"num_logical \(64\) must be a multiple of num_groups \(5\)"),
        ({"num_gpus": 0}, r"num_gpus must be >= 1, got 0"),
        ({"algorithm": "fastest"}, r"'fastest' is not a valid EplbAlgorithm"),
    ],
)
def test_bad_layouts_name_the_field_and_numbers(kwargs: dict, message: str) -> None:
    args = {"num_physical": 72, "num_groups": 8, "num_nodes": 4, "num_gpus": 8}
    args["algorithm"] = EplbAlgorithm.AUTO
    args.update(kwargs)
    with pytest.raises((EplbError, ValueError), match=message):
        rebalance(zipf_load(2, 64, 1.0, seed=0), **args)


@pytest.mark.parametrize(
    ("load", "message"),
    [
        (torch.ones(64), r"shape \[layers, experts\], got \(64,\)"),
        (torch.tensor([[1.0, -2.0]]), r"load\[0, 1\] is -2.0; loads must be >= 0"),
        (torch.tensor([[1.0, float("nan")]]), r"load\[0, 1\] is nan; loads must be finite"),
        ([[1, 2]], r"must be a torch.Tensor"),
    ],
)
def test_bad_loads_say_what_is_wrong(load: object, message: str) -> None:
    with pytest.raises(EplbError, match=message):
        rebalance(load, 2, 1, 1, 1)  # type: ignore[arg-type]


def test_an_idle_layer_still_gets_a_valid_placement() -> None:
    load = torch.zeros(3, 64)
    load[1] = zipf_load(1, 64, 1.0, seed=0)[0]
    for policy in EplbAlgorithm:
        placement = rebalance(load, 72, 8, 4, 8, policy)
        assert_valid(placement, load, 72)


@settings(max_examples=40, deadline=None)
@given(
    num_groups=st.sampled_from([1, 2, 4]),
    nodes=st.sampled_from([1, 2, 4]),
    gpus_per_node=st.integers(1, 3),
    slots_per_gpu=st.integers(1, 4),
    s=st.floats(0.0, 2.0),
    seed=st.integers(0, 1000),
)
# A warm start whose node relabelling must not reuse replicas counted for the old group map.
@example(num_groups=2, nodes=2, gpus_per_node=3, slots_per_gpu=3, s=0.5625, seed=56)
# A node-local layer: its warm start is judged against its hottest node's even split.
@example(num_groups=2, nodes=2, gpus_per_node=3, slots_per_gpu=4, s=0.0, seed=2)
def test_any_fitting_layout_gives_a_valid_placement_and_a_stable_rerun(
    num_groups: int, nodes: int, gpus_per_node: int, slots_per_gpu: int, s: float, seed: int
) -> None:
    num_gpus = nodes * gpus_per_node
    num_physical = num_gpus * slots_per_gpu
    num_experts = num_physical - (seed % (num_physical // 2 + 1))
    num_experts -= num_experts % num_groups
    if num_experts < num_groups:
        return
    load = zipf_load(3, num_experts, s, seed=seed)
    for policy in EplbAlgorithm:
        if policy is EplbAlgorithm.HIERARCHICAL and num_groups % nodes:
            continue
        placement = rebalance(load, num_physical, num_groups, nodes, num_gpus, policy)
        assert_valid(placement, load, num_physical)
    first = rebalance(load, num_physical, num_groups, nodes, num_gpus)
    moved = drifted(load, 0.3, seed=seed)
    second = rebalance(moved, num_physical, num_groups, nodes, num_gpus, previous=first)
    assert_valid(second, moved, num_physical)
    fresh = rebalance(moved, num_physical, num_groups, nodes, num_gpus)
    # The warm start never settles for less balance than our fresh plan, unless it is already
    # within the warm slack of a perfectly even split (moving weights for the last few tenths of
    # a percent is not worth it): of all GPUs, or in a layer whose groups stay on their nodes,
    # of the hottest node's GPUs (no such placement does better).
    mean = moved.sum(-1) / num_gpus
    even = mean.clone()
    group_load = moved.view(3, num_groups, -1).sum(-1)
    slot_group = second.phy2log // (num_experts // num_groups)
    for layer in range(3 if num_groups % nodes == 0 and nodes > 1 else 0):
        if groups_stay_on_nodes(
            Placement.from_phy2log(second.phy2log[layer : layer + 1], num_experts), num_groups, nodes
        ):
            per_node = slot_group[layer].view(nodes, -1)
            even[layer] = max(float(group_load[layer, g.unique()].sum()) for g in per_node) / gpus_per_node
    ceiling = mean / (even * (1 + WARM_SLACK)) - 1e-9
    fresh_floor = placement_balancedness(moved, fresh, num_gpus) * (1 - 1e-4)
    got = placement_balancedness(moved, second, num_gpus)
    assert bool((got >= torch.minimum(fresh_floor, ceiling)).all())
