"""Starting from the previous placement: keep what still fits, relabel what does not.

Bins (GPUs, nodes) are interchangeable for balance, so any new assignment can be relabelled to
overlap the old one as much as possible; and a warm start keeps every replica that the new
replica counts still allow where it was, filling only the freed slots.
"""

from __future__ import annotations

import torch
from moeplane.workers.eplb.packing import Bins


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
    """`warm_bins` without its shortcut for previous assignments that need no repair."""
    num_domains, num_bins, per_bin = prev_ids.shape
    num_slots = num_bins * per_bin
    num_experts = weight.shape[1]
    per_replica = weight / counts
    flat_prev = prev_ids.reshape(num_domains, num_slots)
    valid = flat_prev >= 0
    safe_prev = flat_prev.clamp_min(0)

    # Rank each old replica among its expert's replicas, coolest GPU first (by the new loads).
    slot_w = torch.where(valid, per_replica.gather(1, safe_prev), 0.0)
    gpu_rank = torch.argsort(torch.argsort(slot_w.view(num_domains, num_bins, per_bin).sum(-1), dim=1), dim=1)
    slot_rank = gpu_rank.repeat_interleave(per_bin, dim=1) * per_bin + torch.arange(per_bin).repeat(num_bins)
    key = torch.where(valid, flat_prev, num_experts) * num_slots + slot_rank
    order = torch.argsort(key, dim=1)
    sorted_e = torch.where(valid, flat_prev, num_experts).gather(1, order)
    pos = torch.arange(num_slots).expand(num_domains, -1)
    starts = torch.ones_like(sorted_e, dtype=torch.bool)
    starts[:, 1:] = sorted_e[:, 1:] != sorted_e[:, :-1]
    run_start = torch.cummax(torch.where(starts, pos, 0), dim=1).values
    replica_rank = torch.empty_like(order).scatter_(1, order, pos - run_start)
    keep = valid & (replica_rank < counts.gather(1, safe_prev))

    kept = torch.zeros_like(counts).scatter_add_(1, safe_prev, keep.to(torch.int64))
    need = counts - kept  # >= 0: a kept replica is always within its expert's new count
    num_free = need.sum(1)

    # The missing replicas, heaviest first, padded per domain.
    need_ids_flat = torch.repeat_interleave(torch.arange(num_experts).repeat(num_domains), need.flatten())
    domain = torch.repeat_interleave(torch.arange(num_domains), num_free)
    within = torch.arange(need_ids_flat.numel()) - (torch.cumsum(num_free, 0) - num_free)[domain]
    need_w = torch.full((num_domains, num_slots), float("-inf"), dtype=torch.float64)
    need_ids = torch.full((num_domains, num_slots), -1, dtype=torch.int64)
    need_w[domain, within] = per_replica[domain, need_ids_flat]
    need_ids[domain, within] = need_ids_flat
    by_weight = torch.argsort(need_w, dim=1, descending=True, stable=True)
    need_ids = need_ids.gather(1, by_weight)

    # Free slots: first free slot of every GPU (coolest GPU first), then the second ones, ...
    kept_w = torch.where(keep, slot_w, 0.0)
    gpu_load = kept_w.view(num_domains, num_bins, per_bin).sum(-1)
    free = ~keep
    free_rank = (torch.cumsum(free.view(num_domains, num_bins, per_bin), -1) - 1).view(num_domains, num_slots)
    scale = gpu_load.max(dim=1, keepdim=True).values.clamp_min(1e-300) * 2
    free_key = torch.where(free, free_rank + gpu_load.repeat_interleave(per_bin, dim=1) / scale, float("inf"))
    free_order = torch.argsort(free_key, dim=1, stable=True)

    ids = torch.where(keep, flat_prev, -1)
    fills = torch.arange(num_slots).expand(num_domains, -1) < num_free.unsqueeze(1)
    d_idx, i_idx = fills.nonzero(as_tuple=True)
    ids[d_idx, free_order[d_idx, i_idx]] = need_ids[d_idx, i_idx]
    w = per_replica.gather(1, ids)
    return Bins(ids.view(num_domains, num_bins, per_bin), w.view(num_domains, num_bins, per_bin))


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
