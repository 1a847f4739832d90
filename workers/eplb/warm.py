"""Starting from the previous placement: keep what still fits, relabel what does not.

Bins (GPUs, nodes) are interchangeable for balance, so any new assignment can be relabelled to
overlap the old one as much as possible; and a warm start keeps every replica that the new
replica counts still allow where it was, filling only the freed slots.
"""

from __future__ import annotations

import numpy
import torch
from moeplane.workers.eplb.packing import Bins
from moeplane.workers.eplb.search import bin_loads
from moeplane.workers.eplb.sorting import argsort_desc


def overlap(new_ids: torch.Tensor, old_ids: torch.Tensor, num_ids: int) -> torch.Tensor:
    """How many of each new bin's items each old bin already holds.

    Args:
        new_ids: [D, n, a] int64 items per new bin; old_ids: [D, n, b] int64 items per old bin,
            -1 for none. Ids lie in [0, num_ids).
    Returns:
        [D, n, n] int64: [d, i, j] counts items of new bin i present in old bin j (with
        multiplicity of the old copies).
    """
    num_domains, num_bins, _ = old_ids.shape
    present = torch.zeros(num_domains, num_bins, num_ids + 1, dtype=torch.int64)
    present.scatter_add_(2, old_ids.clamp_min(-1) % (num_ids + 1), torch.ones_like(old_ids))
    present[..., num_ids] = 0  # the -1 "none" marker maps to the spare last column
    flat_new = new_ids.flatten(1)  # [D, n*a]
    hits = present.gather(2, flat_new.unsqueeze(1).expand(-1, num_bins, -1))  # [D, n_old, n*a]
    per_new = hits.view(num_domains, num_bins, num_bins, -1).sum(-1)  # [D, n_old, n_new]
    return per_new.transpose(1, 2).contiguous()


def greedy_match(score: torch.Tensor, rounds: int = 4) -> torch.Tensor:
    """A one-to-one map from new bins to old bins with a large total score (not always maximal).

    Each round every unmatched new bin proposes its best free old bin and each old bin keeps its
    strongest proposer; after `rounds`, leftovers pair up in index order.

    Args:
        score: [D, n, n] int64, [d, i, j] the value of sending new bin i to old bin j.
    Returns:
        [D, n] int64 permutation: new bin i becomes old bin perm[i].
    """
    num_domains, num_bins, _ = score.shape
    perm = torch.full((num_domains, num_bins), -1, dtype=torch.int64)
    old_free = torch.ones(num_domains, num_bins, dtype=torch.bool)
    new_index = torch.arange(num_bins).expand(num_domains, -1)
    for _ in range(rounds):
        new_free = perm < 0
        masked = score.masked_fill(~old_free.unsqueeze(1), -1).masked_fill(~new_free.unsqueeze(2), -1)
        value, choice = masked.max(dim=-1)  # [D, n_new]
        proposing = new_free & (value > 0)
        if not bool(proposing.any()):
            break
        # Unique key per proposer: higher score wins, then the lower new-bin index.
        key = torch.where(proposing, value * (num_bins + 1) + (num_bins - new_index), -1)
        best = torch.full((num_domains, num_bins), -1, dtype=torch.int64)
        best.scatter_reduce_(1, choice, key, reduce="amax")
        wins = proposing & (key == best.gather(1, choice))
        perm = torch.where(wins, choice, perm)
        taken = torch.zeros(num_domains, num_bins, dtype=torch.int64)
        taken.scatter_add_(1, choice, wins.to(torch.int64))
        old_free &= taken == 0
    # Leftovers: the k-th unmatched new bin takes the k-th free old bin.
    new_left = perm < 0
    rank_new = torch.cumsum(new_left, 1) - 1
    free_sorted = torch.argsort((~old_free).to(torch.int64), dim=1, stable=True)
    fill = free_sorted.gather(1, rank_new.clamp_min(0))
    return torch.where(new_left, fill, perm)


def apply_relabel(ids: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Move new bin i to position perm[i]. ids: [D, n, k]; perm: [D, n]. Returns [D, n, k]."""
    out = torch.empty_like(ids)
    out.scatter_(1, perm.unsqueeze(-1).expand_as(ids), ids)
    return out


def warm_bins(prev_ids: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> Bins:
    """The previous assignment, repaired to the new replica counts with few changes.

    Every old replica that the new counts still allow stays in its slot (an expert that lost
    replicas keeps those on the coolest GPUs). The freed slots receive the missing replicas:
    heaviest replica first, first free slot of each GPU before second ones, coolest GPU first.

    Args:
        prev_ids: [D, B, k] int64 expert per slot before (-1: the slot holds nothing usable).
        weight: [D, E] float64 new loads; counts: [D, E] int64 new replica counts (sum B*k).
    Returns:
        Bins with the repaired assignment (each slot's load is weight / count of its expert).
    """
    num_domains, num_bins, per_bin = prev_ids.shape
    per_replica = weight / counts
    flat_prev = prev_ids.reshape(num_domains, num_bins * per_bin)
    if bool((flat_prev >= 0).all()):
        held = torch.zeros_like(counts).scatter_add_(1, flat_prev, torch.ones_like(flat_prev))
        if torch.equal(held, counts):  # nothing to repair: every replica stays
            return Bins(prev_ids.clone(), per_replica.gather(1, flat_prev).view_as(prev_ids))
    return repair_bins(prev_ids, weight, counts)


def repair_bins(prev_ids: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> Bins:
    """`warm_bins` without its shortcut for previous assignments that need no repair.

    In numpy (a few dozen small operations, each several times cheaper than in torch); the
    GPU sums and the sort of GPUs by load stay in torch, so that equal loads rank as before.
    """
    num_domains, num_bins, per_bin = prev_ids.shape
    num_slots = num_bins * per_bin
    num_experts = weight.shape[1]
    per_replica = (weight / counts).numpy()
    counts_n = counts.numpy()
    flat_prev = prev_ids.reshape(num_domains, num_slots).numpy()
    valid = flat_prev >= 0
    safe_prev = numpy.maximum(flat_prev, 0)
    rows = numpy.arange(num_domains)[:, None]

    # Rank each old replica among its expert's replicas, coolest GPU first (by the new loads).
    slot_w = numpy.where(valid, numpy.take_along_axis(per_replica, safe_prev, 1), 0.0)
    gpu_order = torch.argsort(bin_loads(torch.from_numpy(slot_w).view(num_domains, num_bins, per_bin)), dim=1)
    gpu_rank = numpy.empty((num_domains, num_bins), dtype=numpy.int64)
    gpu_rank[rows, gpu_order.numpy()] = numpy.arange(num_bins)
    slot_rank = numpy.repeat(gpu_rank, per_bin, axis=1) * per_bin + numpy.tile(
        numpy.arange(per_bin), num_bins
    )
    expert = numpy.where(valid, flat_prev, num_experts)
    order = numpy.argsort(expert * num_slots + slot_rank, axis=1)  # unique keys: any sort agrees
    sorted_e = numpy.take_along_axis(expert, order, 1)
    pos = numpy.arange(num_slots)
    starts = numpy.ones_like(sorted_e, dtype=bool)
    starts[:, 1:] = sorted_e[:, 1:] != sorted_e[:, :-1]
    run_start = numpy.maximum.accumulate(numpy.where(starts, pos, 0), axis=1)
    replica_rank = numpy.empty_like(order)
    replica_rank[rows, order] = pos - run_start
    keep = valid & (replica_rank < numpy.take_along_axis(counts_n, safe_prev, 1))

    kept = numpy.bincount(
        (safe_prev + rows * num_experts)[keep], minlength=num_domains * num_experts
    ).reshape(num_domains, num_experts)
    need = counts_n - kept  # >= 0: a kept replica is always within its expert's new count
    num_free = need.sum(1)

    # The missing replicas, heaviest first, padded per domain.
    need_ids_flat = numpy.repeat(numpy.tile(numpy.arange(num_experts), num_domains), need.ravel())
    domain = numpy.repeat(numpy.arange(num_domains), num_free)
    within = numpy.arange(need_ids_flat.size) - (numpy.cumsum(num_free) - num_free)[domain]
    need_w = numpy.full((num_domains, num_slots), -numpy.inf)
    need_ids = numpy.full((num_domains, num_slots), -1, dtype=numpy.int64)
    need_w[domain, within] = per_replica[domain, need_ids_flat]
    need_ids[domain, within] = need_ids_flat
    need_ids = numpy.take_along_axis(need_ids, argsort_desc(torch.from_numpy(need_w)).numpy(), 1)

    # Free slots: first free slot of every GPU (coolest GPU first), then the second ones, ...
    kept_w = numpy.where(keep, slot_w, 0.0)
    gpu_load = bin_loads(torch.from_numpy(kept_w).view(num_domains, num_bins, per_bin)).numpy()
    free = ~keep
    free_rank = (numpy.cumsum(free.reshape(num_domains, num_bins, per_bin), -1) - 1).reshape(num_domains, -1)
    scale = numpy.maximum(gpu_load.max(1, keepdims=True), 1e-300) * 2
    free_key = numpy.where(free, free_rank + numpy.repeat(gpu_load, per_bin, axis=1) / scale, numpy.inf)
    free_order = argsort_desc(torch.from_numpy(-free_key)).numpy()  # ascending, ties in index order

    ids = numpy.where(keep, flat_prev, -1)
    d_idx, i_idx = numpy.nonzero(numpy.arange(num_slots) < num_free[:, None])
    ids[d_idx, free_order[d_idx, i_idx]] = need_ids[d_idx, i_idx]
    w = numpy.take_along_axis(per_replica, ids, 1)
    shape = (num_domains, num_bins, per_bin)
    return Bins(torch.from_numpy(ids).view(shape), torch.from_numpy(w).view(shape))


def node_homes(
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
