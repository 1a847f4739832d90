"""moeplane's own placement policy: balance first, then move as few weights as that allows.

It keeps DeepSeek's locality contract where it is cheap: when the node count divides the group
count, a layer's expert groups stay on nodes (group-limited routing then reaches few nodes)
unless that caps the layer's balancedness more than `locality_slack` below what a global
placement reaches; such layers are placed globally. In node-local layers a few cold replicas
may still trade places across nodes where that cools the hottest GPU (`nudge.strays`; not with
`locality_slack` 1, which keeps groups strictly local). Every stage improves on DeepSeek's:
1. Groups onto nodes, and replicas onto GPUs, with round-wise LPT (one sort per round), then
   parallel hot/cool pair swaps on wide domains, then a swap local search on the hottest bin,
   all batched over layers. Searches stop at a proven floor or within `_GOOD_ENOUGH` of an even
   split.
2. Replica counts minimise the hottest replica (greedy on load / count, as DeepSeek); with two
   slots per GPU a local search over the counts then minimises the hottest GPU after optimal
   pairing (`pair_counts`), which greedy counts do not: splitting a cold expert, for one, gives
   the hot replicas lighter partners. A rebalance keeps the previous counts where they pair
   no hotter.
3. With a previous placement: first the shortcuts of `nudge` (swaps within the
   current placement until it is within `_WARM_SLACK` of an even split; without redundancy,
   stray swaps up to the tight bound). Only the layers they do not settle go on: a warm start
   keeps every replica that still fits in its old slot, fills the freed slots, and swaps
   (fewest new moves first) until the layer is as balanced as the fresh plan. Where it cannot
   get there, the fresh plan is used where cooler, its nodes and GPUs relabelled to overlap the
   old ones. Either way experts that stay on a GPU keep their slots.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from moeplane.workers.eplb.counts import _COUNT_DONORS, _COUNT_STEPS, _pair_search, _pair_start, top_counts
from moeplane.workers.eplb.deepseek import node_experts
from moeplane.workers.eplb.nudge import nudge, optimal_and_local, strays
from moeplane.workers.eplb.optimum import bin_floor
from moeplane.workers.eplb.packing import (
    Bins,
    round_pack,
    stable_slots,
    swap_search,
)
from moeplane.workers.eplb.pairs import pair_rounds
from moeplane.workers.eplb.sorting import sorted_desc, sorted_replicas
from moeplane.workers.eplb.types import EplbLayout
from moeplane.workers.eplb.warm import apply_relabel, greedy_match, node_homes, overlap, warm_bins

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
    if previous is None or layout.slots_per_gpu < 3:
        return _replace(load, layout, previous, locality_slack)
    out, done = nudge(load, previous, layout, _WARM_SLACK)
    if bool(done.all()):
        return out
    if not bool(done.any()):
        return _replace(load, layout, previous, locality_slack)
    rows = (~done).nonzero(as_tuple=True)[0]
    sub = dataclasses.replace(layout, num_layers=rows.numel())
    out[rows] = _replace(load[rows], sub, previous[rows], locality_slack)
    return out


def _replace(
    load: torch.Tensor, layout: EplbLayout, previous: torch.Tensor | None, locality_slack: float
) -> torch.Tensor:
    """`balanced_placement` from replica counts up: fresh, or warm from `previous`."""
    if not layout.hierarchical_fits:
        return _place(load, layout, 1, 1, previous, None)
    if previous is not None and locality_slack < 1.0 and layout.num_physical == layout.num_logical:
        # Without redundancy the bound is tight: where a few stray swaps bring the current
        # placement to it, nothing is better, and nothing else needs to move.
        tried = strays(load, previous, layout.num_gpus)
        done = optimal_and_local(load, tried, layout)
        if bool(done.all()):
            return tried
        rows = (~done).nonzero(as_tuple=True)[0]
        out = tried  # a fresh tensor from `strays`
        sub = dataclasses.replace(layout, num_layers=rows.numel())
        out[rows] = _balanced(load[rows], sub, previous[rows], locality_slack)
        return out
    return _balanced(load, layout, previous, locality_slack)


def _balanced(
    load: torch.Tensor, layout: EplbLayout, previous: torch.Tensor | None, locality_slack: float
) -> torch.Tensor:
    """`balanced_placement` where groups can stay on nodes."""
    groups, nodes = layout.num_groups, layout.num_nodes
    node_groups = _pack_groups(load, groups, nodes)
    local, global_reps, local_reps = _keep_local(load, layout, node_groups, previous, locality_slack)
    allow_strays = locality_slack < 1.0
    if bool(local.all()):
        out = _place(load, layout, groups, nodes, previous, node_groups, replicas=local_reps)
        return strays(load, out, layout.num_gpus) if allow_strays else out
    out = torch.empty(layout.num_layers, layout.num_physical, dtype=torch.int64)
    rows = local.nonzero(as_tuple=True)[0]
    if rows.numel():
        prev = None if previous is None else previous[rows]
        kept = _place(load[rows], layout, groups, nodes, prev, node_groups[rows], replicas=local_reps)
        out[rows] = strays(load[rows], kept, layout.num_gpus) if allow_strays else kept
    rows = (~local).nonzero(as_tuple=True)[0]
    prev = None if previous is None else previous[rows]
    out[rows] = _place(load[rows], layout, 1, 1, prev, None, replicas=global_reps)
    return out


class _Replicas(NamedTuple):
    """Replicas of every domain: counts [D, E'] int64, `sorted_replicas`' ids, w [D, n], and
    floor [D] float64, their `bin_floor` (the packing's bound, reused by the search)."""

    counts: torch.Tensor
    ids: torch.Tensor
    w: torch.Tensor
    floor: torch.Tensor


def _keep_local(
    load: torch.Tensor,
    layout: EplbLayout,
    node_groups: torch.Tensor,
    previous: torch.Tensor | None,
    slack: float,
) -> tuple[torch.Tensor, _Replicas, _Replicas]:
    """[L] bool: layers whose groups stay on their nodes; the global replicas of the other
    layers (in order); and the node-local replicas of the layers kept local (L' * N domains).

    Compares lower bounds on the hottest GPU: `bin_floor` of the replicas over all slots against
    the same within each node. The placements themselves come within a fraction of a percent.
    Cheap bounds settle most layers before the sorts: the hottest replica with the coolest
    partners bounds the global floor from below, and the hottest node's mean GPU the local one.
    Layers placed globally before need half the slack to return, so a layer near the line does
    not flip (and move its weights) every rebalance.
    """
    num_layers, num_logical = load.shape
    nodes, groups = layout.num_nodes, layout.num_groups
    group_size = num_logical // groups
    per_gpu = layout.slots_per_gpu
    counts = top_counts(load, layout.num_physical)
    per_replica = load / counts
    # Balancedness bounds are mean / peak; compare peaks to stay finite on idle layers.
    cheap = per_replica.amax(-1) + (per_gpu - 1) * per_replica.amin(-1)
    global_peak = torch.maximum(load.sum(-1) / layout.num_gpus, cheap) * (1 + _TOL)
    exact = torch.zeros(num_layers, dtype=torch.bool)
    global_ids = torch.empty(num_layers, layout.num_physical, dtype=torch.int64)
    global_w = torch.empty(num_layers, layout.num_physical, dtype=torch.float64)
    global_floor = torch.empty(num_layers, dtype=torch.float64)

    def sharpen(wanted: torch.Tensor) -> None:
        """The full global floor (and replicas) of the `wanted` ([L] bool) layers."""
        rows = (wanted & ~exact).nonzero(as_tuple=True)[0]
        if rows.numel():
            global_ids[rows], global_w[rows] = sorted_replicas(load[rows], counts[rows])
            global_floor[rows] = bin_floor(global_w[rows], per_gpu)
            global_peak[rows] = global_floor[rows] * (1 + _TOL)
            exact[rows] = True

    keep_factor = torch.full((num_layers,), 1 - slack, dtype=torch.float64)
    if previous is not None:
        was_global = ~node_homes(previous, groups, nodes, group_size)[2]
        keep_factor = torch.where(was_global, 1 - slack / 2, keep_factor)
    group_load = load.view(num_layers, groups, group_size).sum(-1)
    node_load = group_load.gather(1, node_groups.flatten(1)).view(num_layers, nodes, -1).sum(-1)
    node_bar = node_load.amax(-1) / (layout.num_gpus // nodes) * keep_factor
    sharpen(node_bar > global_peak)
    keep = node_bar <= global_peak
    rows = keep.nonzero(as_tuple=True)[0]
    local_reps = _Replicas(*(t[:0] for t in (counts, global_ids, global_w, global_floor)))
    if rows.numel():
        mlog2log = node_experts(node_groups[rows], group_size)
        local_load = load[rows].gather(1, mlog2log.flatten(1)).view(rows.numel() * nodes, -1)
        local_counts = top_counts(local_load, layout.num_physical // nodes)
        local_ids, local_w = sorted_replicas(local_load, local_counts)
        local_floor = bin_floor(local_w, per_gpu)
        local_reps = _Replicas(local_counts, local_ids, local_w, local_floor)
        local_bar = local_floor.view(-1, nodes).amax(-1) * keep_factor[rows]
        unsure = torch.zeros(num_layers, dtype=torch.bool)
        unsure[rows] = local_bar > global_peak[rows]
        sharpen(unsure)
        stays = local_bar <= global_peak[rows]
        keep[rows] = stays
        if not bool(stays.all()):
            local_reps = _Replicas(*(t[stays.repeat_interleave(nodes)] for t in local_reps))
    sharpen(~keep)
    rows = (~keep).nonzero(as_tuple=True)[0]
    global_reps = _Replicas(counts[rows], global_ids[rows], global_w[rows], global_floor[rows])
    return keep, global_reps, local_reps


def _place(
    load: torch.Tensor,
    layout: EplbLayout,
    groups: int,
    nodes: int,
    previous: torch.Tensor | None,
    node_groups: torch.Tensor | None,
    counts: torch.Tensor | None = None,
    replicas: _Replicas | None = None,
) -> torch.Tensor:
    """Place the layers of `load` with groups pinned to `nodes` nodes (1: global). [L, R] int64.

    `counts` ([L, E], global placement only) and `replicas` (per domain, for the given
    `node_groups`) reuse replica counts computed already."""
    num_layers, num_logical = load.shape
    group_size = num_logical // groups
    slots_per_node = layout.num_physical // nodes
    gpus_per_node = layout.num_gpus // nodes
    per_gpu = layout.slots_per_gpu

    # Stage 1: expert groups onto nodes.
    if node_groups is None:
        node_groups = _pack_groups(load, groups, nodes)
    if previous is not None and nodes > 1:
        stable = _stable_node_groups(load, node_groups, previous, groups, nodes)
        if not torch.equal(stable, node_groups):
            replicas = None  # computed for the other group -> node map
        node_groups = stable
    mlog2log = node_experts(node_groups, group_size)  # [L, N, E/N]
    num_domains = num_layers * nodes

    # Stage 2: replicas per expert within each node (or globally).
    local_load = load.gather(1, mlog2log.flatten(1)).view(num_domains, -1)
    expanded, floor = None, None
    if replicas is not None:
        counts, expanded, floor = replicas.counts, (replicas.ids, replicas.w), replicas.floor
    elif counts is None or nodes > 1:
        counts = top_counts(local_load, slots_per_node)
    prev_local = None
    if previous is not None:
        prev_local = _previous_local(previous, mlog2log, nodes).view(num_domains, gpus_per_node, per_gpu)
    if per_gpu == 2:
        expanded, floor = None, None  # the counts change
        counts, peak = _pair_search(local_load, counts, _COUNT_STEPS, _COUNT_DONORS)
        if prev_local is not None:
            # The fresh plan's counts set the bar; the previous ones are kept where they pair
            # no hotter (fewer weights move), so a rebalance is never less balanced than a fresh plan.
            counts = _pair_start(local_load, counts, peak, prev_local)

    # Stage 3: replicas onto GPUs.
    if prev_local is None:
        local = _fresh_bins(local_load, counts, gpus_per_node, nodes, expanded=expanded, floor=floor).ids
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
    expanded: tuple[torch.Tensor, torch.Tensor] | None = None,
    floor: torch.Tensor | None = None,
) -> Bins:
    """A fresh packing of every domain's replicas: round-wise LPT, then the swap search.

    `expanded`: `sorted_replicas(local_load, counts)`, and `floor` their `bin_floor`, if
    already computed (`expanded` is then required)."""
    ids, w = sorted_replicas(local_load, counts) if expanded is None else expanded
    fresh = Bins.from_items(ids, w, round_pack(w, num_bins))
    if w.shape[1] == 2 * num_bins:
        return fresh  # pairs: round_pack's heaviest-with-lightest is optimal, no swap helps
    if floor is None or expanded is None:
        floor = bin_floor(w, w.shape[1] // num_bins)
    # Where every layer's hottest bin already meets its bound (the floor, or close enough to
    # an even split), no search can gain: skip it.
    # (The search only works on each layer's hottest domain, so only that one's bound counts.)
    goal = torch.maximum(local_load.sum(-1) / num_bins * (1 + good_enough), floor) * (1 + _TOL)
    peak, hot = fresh.loads().amax(-1).view(-1, nodes).max(dim=-1)
    if not bool((peak > goal.view(-1, nodes).gather(1, hot.unsqueeze(1)).squeeze(1)).any()):
        return fresh
    if num_bins >= 16 and w.shape[1] >= 3 * num_bins:
        # Wide domains with several items per bin: parallel pair rounds toward an even split do
        # most of the work at a fraction of the search's cost per fixed bin. (With two items per
        # bin the cool bins hold only cold pairs, which cannot absorb a hot item.)
        even = local_load.sum(-1) / num_bins * (1 + good_enough)
        fresh = pair_rounds(fresh, torch.maximum(even, floor), max_rounds=4)
    return swap_search(
        fresh, _search_steps(num_bins), domains_per_layer=nodes, good_enough=good_enough, floor=floor
    )


def _pack_groups(load: torch.Tensor, groups: int, nodes: int) -> torch.Tensor:
    """[L, N, G/N] int64 groups per node (ascending within a node), node loads balanced."""
    num_layers = load.shape[0]
    if nodes == 1 or nodes == groups:
        # One node, or one group per node: every assignment balances the nodes alike.
        return torch.arange(groups).view(nodes, -1).expand(num_layers, -1, -1).clone()
    group_load = load.view(num_layers, groups, -1).sum(-1)
    order = torch.argsort(group_load, dim=-1, descending=True, stable=True)
    if groups == 2 * nodes:
        # Pairs: node i takes the i-th heaviest group and the i-th lightest (what round_pack
        # gives, and optimal), without its rounds.
        pairs = torch.stack([order[:, :nodes], order[:, nodes:].flip(-1)], dim=-1)
        return pairs.sort(dim=-1).values
    w = group_load.gather(1, order)
    packed = swap_search(Bins.from_items(order, w, round_pack(w, nodes)), _search_steps(nodes))
    return packed.ids.sort(dim=-1).values


def _stable_node_groups(
    load: torch.Tensor, fresh: torch.Tensor, previous: torch.Tensor, groups: int, nodes: int
) -> torch.Tensor:
    """Per layer: the previous group -> node map if it balances nodes as well as `fresh`, else
    `fresh` with its nodes relabelled to keep as many groups where they were."""
    num_layers, num_logical = load.shape
    group_size = num_logical // groups
    per_node = groups // nodes
    on_node, home, consistent = node_homes(previous, groups, nodes, group_size)
    prev_groups = torch.argsort(home * groups + torch.arange(groups), dim=-1).view(
        num_layers, nodes, per_node
    )
    if per_node == 1 and bool((torch.sort(home, dim=-1).values == torch.arange(groups)).all()):
        # One group per node, each node home to one: every map balances nodes alike, and the
        # relabelling below sends each group home, which is the previous map.
        return prev_groups

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

    The warm start aims for the hottest node's even split, or where its replicas cannot get
    there, for their floor: the optimal pairing with two per GPU, `bin_floor` otherwise. Fresh
    plans are made only for the layers it misses, and replace a domain only where they are
    cooler than its warm start.

    Args:
        prev_local: [D, B, k] old contents as node-local ids (-1: not reusable).
        local_load: [D, E'] loads; counts: [D, E'] new replica counts.
    Returns:
        [D, B, k] int64 node-local ids.
    """
    num_domains, num_bins, per_bin = prev_local.shape
    nodes = num_domains // num_layers
    warm = warm_bins(prev_local, local_load, counts)
    # Targets are per layer (a node that is not its layer's hottest may be less balanced at no
    # cost to the layer).
    even = (local_load.sum(-1) / num_bins).view(num_layers, nodes).amax(-1) * (1 + _WARM_SLACK)
    ordered = sorted_desc(warm.w.flatten(1))
    if per_bin == 2:
        floor = (ordered[:, :num_bins] + ordered[:, num_bins:].flip(-1)).amax(-1)
    else:
        floor = bin_floor(ordered, per_bin)
    layer_floor = floor.view(num_layers, nodes).amax(-1) * (1 + _TOL)
    target = torch.maximum(even, layer_floor).repeat_interleave(nodes)
    if per_bin >= 3:
        warm = pair_rounds(warm, target, max_rounds=4, prev_ids=prev_local)
    # `floor` bounds every packing of these replicas: the search need not find its own.
    warm = swap_search(warm, num_bins // 2 + 2, target=target, prev_ids=prev_local, floor=floor)
    warm_peak = warm.loads().amax(-1)
    missed = warm_peak > target * (1 + _TOL)
    if not bool(missed.any()):
        return warm.ids
    layers = missed.view(num_layers, nodes).any(-1).nonzero(as_tuple=True)[0]
    rows = (layers.view(-1, 1) * nodes + torch.arange(nodes)).flatten()
    fresh = _fresh_bins(local_load[rows], counts[rows], num_bins, nodes, good_enough=_WARM_SLACK)
    cooler = missed[rows] & (fresh.loads().amax(-1) < warm_peak[rows] * (1 - _TOL))
    if not bool(cooler.any()):
        return warm.ids
    cold, fresh_ids = rows[cooler], fresh.ids[cooler]
    score = overlap(fresh_ids, prev_local[cold], local_load.shape[1])
    out = warm.ids.clone()
    out[cold] = apply_relabel(fresh_ids, greedy_match(score))
    return out
