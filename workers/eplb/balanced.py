"""moeplane's own placement policy: balance first, then move as few weights as that allows.

It keeps DeepSeek's locality contract where it is cheap: when the node count divides the group
count, a layer's expert groups stay on nodes (group-limited routing then reaches few nodes)
unless that caps the layer's balancedness more than `locality_slack` below what a global
placement reaches; such layers are placed globally. Every stage improves on DeepSeek's:
1. Groups onto nodes, and replicas onto GPUs, with round-wise LPT (one sort per round), then
   parallel hot/cool pair swaps on wide domains, then a swap local search on the hottest bin,
   all batched over layers. Searches stop at a proven floor or within `_GOOD_ENOUGH` of an even
   split.
2. Replica counts minimise the hottest replica (greedy on load / count, as DeepSeek); with two
   slots per GPU a local search over the counts then minimises the hottest GPU after optimal
   pairing (`pair_counts`), which greedy counts do not: splitting a cold expert, for one, gives
   the hot replicas lighter partners. A rebalance keeps the previous counts where they pair
   no hotter.
3. With a previous placement: a warm start keeps every replica that still fits in its old slot,
   fills the freed slots, and swaps (fewest new moves first) until the layer is as balanced as
   the fresh plan. Where it cannot get there, the fresh plan is used, its nodes and GPUs
   relabelled to overlap the old ones. Either way experts that stay on a GPU keep their slots.
"""

from __future__ import annotations

import torch
from moeplane.workers.eplb.counts import _COUNT_DONORS, _COUNT_STEPS, _pair_search, _pair_start
from moeplane.workers.eplb.deepseek import node_experts
from moeplane.workers.eplb.packing import (
    Bins,
    bin_floor,
    expand_replicas,
    pair_rounds,
    replica_counts,
    round_pack,
    stable_slots,
    swap_search,
)
from moeplane.workers.eplb.types import EplbLayout
from moeplane.workers.eplb.warm import apply_relabel, greedy_match, overlap, warm_bins

# Relative slack when comparing loads that should be equal up to float rounding.
_TOL = 1e-9
# A fresh search stops within this fraction of a perfectly even split: closer gains nothing.
_GOOD_ENOUGH = 2e-3
# A warm start is accepted within this fraction of a perfectly even split even when the fresh
# plan is closer still: the last few tenths of a percent are not worth moving weights for.
_WARM_SLACK = 5e-3


def _search_steps(num_bins: int) -> int:
    # Each step cools one bin per domain; a few passes over the bins reach a local optimum in
    # practice, and the bound keeps the worst case at a fixed number of tensor operations.
    return 2 * num_bins + 8


def balanced_placement(
    load: torch.Tensor, layout: EplbLayout, previous: torch.Tensor | None, locality_slack: float
) -> torch.Tensor:
    """Our policy.

    Args:
        load: [L, E] float64 tokens per logical expert.
        layout: the validated EP layout.
        previous: [L, R] int64 phy2log of the current placement, or None.
        locality_slack: when groups can stay on nodes, a layer keeps them there unless that
            caps its balancedness more than this fraction below what a global placement reaches.
    Returns:
        phy2log: [L, R] int64; slots of GPU g are g*k .. g*k+k-1 (k = R / num_gpus).
    """
    if not layout.hierarchical_fits:
        return _place(load, layout, 1, 1, previous, None)
    groups, nodes = layout.num_groups, layout.num_nodes
    node_groups = _pack_groups(load, groups, nodes)
    local, global_counts = _keep_local(load, layout, node_groups, previous, locality_slack)
    if bool(local.all()):
        return _place(load, layout, groups, nodes, previous, node_groups)
    out = torch.empty(layout.num_layers, layout.num_physical, dtype=torch.int64)
    rows = local.nonzero(as_tuple=True)[0]
    if rows.numel():
        prev = None if previous is None else previous[rows]
        out[rows] = _place(load[rows], layout, groups, nodes, prev, node_groups[rows])
    rows = (~local).nonzero(as_tuple=True)[0]
    prev = None if previous is None else previous[rows]
    out[rows] = _place(load[rows], layout, 1, 1, prev, None, counts=global_counts[rows])
    return out


def _keep_local(
    load: torch.Tensor,
    layout: EplbLayout,
    node_groups: torch.Tensor,
    previous: torch.Tensor | None,
    slack: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[L] bool: layers whose groups stay on their nodes; and [L, E] the global replica counts.

    Compares cheap lower bounds on the hottest GPU (`bin_floor` of the replicas, within each
    node or over all slots); the placements themselves come within a fraction of a percent.
    Layers placed globally before need half the slack to return, so a layer near the line does
    not flip (and move its weights) every rebalance.
    """
    num_layers, num_logical = load.shape
    nodes, groups = layout.num_nodes, layout.num_groups
    per_gpu = layout.slots_per_gpu
    mlog2log = node_experts(node_groups, num_logical // groups)
    local_load = load.gather(1, mlog2log.flatten(1)).view(num_layers * nodes, -1)
    local_w = expand_replicas(local_load, replica_counts(local_load, layout.num_physical // nodes))[1]
    local_peak = bin_floor(local_w, per_gpu).view(num_layers, nodes).amax(-1)
    global_counts = replica_counts(load, layout.num_physical)
    global_w = expand_replicas(load, global_counts)[1]
    global_peak = bin_floor(global_w, per_gpu)
    # Balancedness bounds are mean / peak; compare peaks to stay finite on idle layers.
    keep = local_peak * (1 - slack) <= global_peak * (1 + _TOL)
    if previous is not None:
        was_global = ~_node_homes(previous, groups, nodes, num_logical // groups)[2]
        back = local_peak * (1 - slack / 2) <= global_peak * (1 + _TOL)
        keep = torch.where(was_global, back, keep)
    return keep, global_counts


def _node_homes(
    previous: torch.Tensor, groups: int, nodes: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each group sat: ([L, G, N] replicas of group g on node m, [L, G] its home node,
    [L] bool every group wholly on its home and every node holding G/N groups)."""
    num_layers, num_physical = previous.shape
    prev_group = previous // group_size
    prev_node = (torch.arange(num_physical) // (num_physical // nodes)).expand(num_layers, -1)
    on_node = torch.zeros(num_layers, groups * nodes, dtype=torch.int64)
    on_node.scatter_add_(1, prev_group * nodes + prev_node, torch.ones_like(prev_group))
    on_node = on_node.view(num_layers, groups, nodes)
    home_count, home = on_node.max(dim=-1)
    per_home = torch.zeros(num_layers, nodes, dtype=torch.int64).scatter_add_(1, home, torch.ones_like(home))
    consistent = (home_count == on_node.sum(-1)).all(-1) & (per_home == groups // nodes).all(-1)
    return on_node, home, consistent


def _place(
    load: torch.Tensor,
    layout: EplbLayout,
    groups: int,
    nodes: int,
    previous: torch.Tensor | None,
    node_groups: torch.Tensor | None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Place the layers of `load` with groups pinned to `nodes` nodes (1: global). [L, R] int64.

    `counts` ([L, E], global placement only) reuses replica counts computed already."""
    num_layers, num_logical = load.shape
    group_size = num_logical // groups
    slots_per_node = layout.num_physical // nodes
    gpus_per_node = layout.num_gpus // nodes
    per_gpu = layout.slots_per_gpu

    # Stage 1: expert groups onto nodes.
    if node_groups is None:
        node_groups = _pack_groups(load, groups, nodes)
    if previous is not None and nodes > 1:
        node_groups = _stable_node_groups(load, node_groups, previous, groups, nodes)
    mlog2log = node_experts(node_groups, group_size)  # [L, N, E/N]
    num_domains = num_layers * nodes

    # Stage 2: replicas per expert within each node (or globally).
    local_load = load.gather(1, mlog2log.flatten(1)).view(num_domains, -1)
    if counts is None or nodes > 1:
        counts = replica_counts(local_load, slots_per_node)
    prev_local = None
    if previous is not None:
        prev_local = _previous_local(previous, mlog2log, nodes).view(num_domains, gpus_per_node, per_gpu)
    if per_gpu == 2:
        counts, peak = _pair_search(local_load, counts, _COUNT_STEPS, _COUNT_DONORS)
        if prev_local is not None:
            # The fresh plan's counts set the bar; the previous ones are kept where they pair
            # no hotter (fewer weights move), so a rebalance is never less balanced than a fresh plan.
            counts = _pair_start(local_load, counts, peak, prev_local)

    # Stage 3: replicas onto GPUs.
    if prev_local is None:
        local = _fresh_bins(local_load, counts, gpus_per_node, nodes).ids
    else:
        local = _prefer_previous(prev_local, local_load, counts, num_layers)
        local = stable_slots(local, prev_local)
    return mlog2log.gather(2, local.reshape(num_layers, nodes, -1)).view(num_layers, layout.num_physical)


def _fresh_bins(
    local_load: torch.Tensor,
    counts: torch.Tensor,
    num_bins: int,
    nodes: int,
    good_enough: float = _GOOD_ENOUGH,
) -> Bins:
    """A fresh packing of every domain's replicas: round-wise LPT, then the swap search."""
    ids, w = expand_replicas(local_load, counts)
    fresh = Bins.from_items(ids, w, round_pack(w, num_bins))
    if w.shape[1] == 2 * num_bins:
        return fresh  # pairs: round_pack's heaviest-with-lightest is optimal, no swap helps
    if num_bins >= 16 and w.shape[1] >= 3 * num_bins:
        # Wide domains with several items per bin: parallel pair rounds toward an even split do
        # most of the work at a fraction of the search's cost per fixed bin. (With two items per
        # bin the cool bins hold only cold pairs, which cannot absorb a hot item.)
        even = local_load.sum(-1) / num_bins * (1 + good_enough)
        fresh = pair_rounds(fresh, torch.maximum(even, bin_floor(w, w.shape[1] // num_bins)), max_rounds=4)
    return swap_search(fresh, _search_steps(num_bins), domains_per_layer=nodes, good_enough=good_enough)


def _pack_groups(load: torch.Tensor, groups: int, nodes: int) -> torch.Tensor:
    """[L, N, G/N] int64 groups per node (ascending within a node), node loads balanced."""
    num_layers = load.shape[0]
    if nodes == 1:
        return torch.arange(groups).expand(num_layers, 1, groups).clone()
    group_load = load.view(num_layers, groups, -1).sum(-1)
    order = torch.argsort(group_load, dim=-1, descending=True, stable=True)
    w = group_load.gather(1, order)
    packed = Bins.from_items(order, w, round_pack(w, nodes))
    packed = swap_search(packed, _search_steps(nodes))
    return packed.ids.sort(dim=-1).values


def _stable_node_groups(
    load: torch.Tensor, fresh: torch.Tensor, previous: torch.Tensor, groups: int, nodes: int
) -> torch.Tensor:
    """Per layer: the previous group -> node map if it balances nodes as well as `fresh`, else
    `fresh` with its nodes relabelled to keep as many groups where they were."""
    num_layers, num_logical = load.shape
    group_size = num_logical // groups
    per_node = groups // nodes
    on_node, home, consistent = _node_homes(previous, groups, nodes, group_size)
    prev_groups = torch.argsort(home * groups + torch.arange(groups), dim=-1).view(
        num_layers, nodes, per_node
    )

    group_load = load.view(num_layers, groups, group_size).sum(-1)
    fresh_max = group_load.gather(1, fresh.flatten(1)).view(num_layers, nodes, per_node).sum(-1).amax(-1)
    prev_max = group_load.gather(1, prev_groups.flatten(1)).view(num_layers, nodes, per_node).sum(-1).amax(-1)
    keep_prev = consistent & (prev_max <= fresh_max * (1 + _TOL))

    # Relabel fresh nodes: score[i, j] = replicas of new node i's groups that sat on old node j.
    score = on_node.gather(1, fresh.flatten(1).unsqueeze(-1).expand(-1, -1, nodes))
    score = score.view(num_layers, nodes, per_node, nodes).sum(2)
    relabelled = apply_relabel(fresh, greedy_match(score))
    return torch.where(keep_prev.view(-1, 1, 1), prev_groups, relabelled)


def _previous_local(previous: torch.Tensor, mlog2log: torch.Tensor, nodes: int) -> torch.Tensor:
    """[L, N, R/N] int64: each old slot's expert as a node-local id, -1 if that expert now lives
    on another node (the slot's content cannot be kept)."""
    num_layers, _, per_node = mlog2log.shape
    num_logical = nodes * per_node
    node_of = torch.empty(num_layers, num_logical, dtype=torch.int64)
    local_of = torch.empty(num_layers, num_logical, dtype=torch.int64)
    flat = mlog2log.flatten(1)
    node_of.scatter_(1, flat, torch.arange(nodes).repeat_interleave(per_node).expand(num_layers, -1))
    local_of.scatter_(1, flat, torch.arange(per_node).repeat(nodes).expand(num_layers, -1))
    prev = previous.view(num_layers, nodes, -1)
    slot_node = torch.arange(nodes).view(1, nodes, 1)
    here = node_of.gather(1, previous).view_as(prev) == slot_node
    return torch.where(here, local_of.gather(1, previous).view_as(prev), -1)


def _prefer_previous(
    prev_local: torch.Tensor, local_load: torch.Tensor, counts: torch.Tensor, num_layers: int
) -> torch.Tensor:
    """Per domain: the warm start when it is as good as a fresh plan (or within `_WARM_SLACK` of a
    perfectly even split), else the fresh plan relabelled onto the old GPUs.

    Where the replicas allow an almost even split (`bin_floor` under the even mark) the warm
    start aims straight for that mark and a fresh plan is only made for layers it misses; where
    they do not, the fresh plan sets the bar first.

    Args:
        prev_local: [D, B, k] old contents as node-local ids (-1: not reusable).
        local_load: [D, E'] loads; counts: [D, E'] new replica counts.
    Returns:
        [D, B, k] int64 node-local ids.
    """
    num_domains, num_bins, per_bin = prev_local.shape
    nodes = num_domains // num_layers
    fresh_ids = torch.empty_like(prev_local)

    def plan_fresh(layers: torch.Tensor) -> torch.Tensor:
        """Fresh plans for every domain of `layers` ([n] bool or int64); returns [n] layer maxima."""
        rows = (layers.view(-1, 1) * nodes + torch.arange(nodes)).flatten()
        fresh = _fresh_bins(local_load[rows], counts[rows], num_bins, nodes, good_enough=_WARM_SLACK)
        fresh_ids[rows] = fresh.ids
        return fresh.loads().amax(-1).view(-1, nodes).amax(-1)

    warm = warm_bins(prev_local, local_load, counts)
    # Targets are per layer (a node that is not its layer's hottest may be less balanced at no
    # cost to the layer): the hottest node's even split, or the fresh plan's hottest GPU.
    even = (local_load.sum(-1) / num_bins).view(num_layers, nodes).amax(-1) * (1 + _WARM_SLACK)
    floor = bin_floor(warm.w.flatten(1).sort(dim=-1, descending=True).values, per_bin)
    unreachable = (floor.view(num_layers, nodes).amax(-1) > even).nonzero(as_tuple=True)[0]
    target = even.clone()
    if unreachable.numel():
        target[unreachable] = torch.maximum(plan_fresh(unreachable), even[unreachable])
    target = target.repeat_interleave(nodes)
    if per_bin >= 3:
        warm = pair_rounds(warm, target, max_rounds=4, prev_ids=prev_local)
    warm = swap_search(warm, num_bins // 2 + 2, target=target, prev_ids=prev_local)
    missed = warm.loads().amax(-1) > target * (1 + _TOL)
    if not bool(missed.any()):
        return warm.ids
    planned = torch.zeros(num_layers, dtype=torch.bool)
    planned[unreachable] = True
    todo = (missed.view(num_layers, nodes).any(-1) & ~planned).nonzero(as_tuple=True)[0]
    if todo.numel():
        plan_fresh(todo)
    cold = missed.nonzero(as_tuple=True)[0]
    score = overlap(fresh_ids[cold], prev_local[cold], local_load.shape[1])
    out = warm.ids.clone()
    out[cold] = apply_relabel(fresh_ids[cold], greedy_match(score))
    return out
