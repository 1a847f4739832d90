"""Vectorised building blocks of the balancer, batched over D independent domains.

A domain is one layer (global placement) or one (layer, node) pair (hierarchical placement).
Every function loops over items, rounds or search steps, never over domains, so the cost does
not grow with the number of layers beyond the width of each tensor operation.

Loads are float64 throughout: token counts reach 1e9 per window and float32 would blur the
comparisons that the local search relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy
import torch
from moeplane.workers.eplb.optimum import bin_floor
from moeplane.workers.eplb.search import bin_loads, numpy_search
from moeplane.workers.eplb.sorting import sorted_desc


def replica_counts(weight: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Replicas per expert that minimise the hottest replica's load (greedy, optimal for that).

    Each step gives one more replica to the expert whose per-replica load `weight / count` is the
    largest, as DeepSeek's EPLB does.

    Args:
        weight: [D, E] float64 loads.
        num_slots: slots to fill per domain (>= E).
    Returns:
        [D, E] int64 counts, each >= 1, summing to `num_slots` per domain.
    """
    num_domains, num_experts = weight.shape
    counts = torch.ones(num_domains, num_experts, dtype=torch.int64)
    one = torch.ones(num_domains, 1, dtype=torch.int64)
    for _ in range(num_slots - num_experts):
        hottest = (weight / counts).argmax(dim=-1, keepdim=True)
        counts.scatter_add_(1, hottest, one)
    return counts


def expand_replicas(weight: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The replica list of every domain, heaviest first.

    Args:
        weight: [D, E] float64 loads.
        counts: [D, E] int64 replicas per expert, summing to the same n in every domain.
    Returns:
        ids: [D, n] int64 expert of each replica; w: [D, n] float64 its load (weight / count),
        sorted descending (ties keep the lower expert id first).
    """
    num_domains, num_experts = counts.shape
    experts = torch.arange(num_experts).repeat(num_domains)
    ids = torch.repeat_interleave(experts, counts.flatten()).view(num_domains, -1)
    w = (weight / counts).gather(1, ids)
    order = torch.argsort(w, dim=-1, descending=True, stable=True)
    return ids.gather(1, order), w.gather(1, order)


def lpt_pack(w: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Longest-processing-time packing with equal bin sizes (DeepSeek's `balanced_packing`).

    Items are taken heaviest first; each goes to the lightest bin that still has room.

    Args:
        w: [D, n] float64 item loads, sorted descending; n is a multiple of num_bins.
    Returns:
        [D, num_bins, n // num_bins] int64 item index held by each (bin, position), positions in
        the order the bin received its items.
    """
    num_domains, num_items = w.shape
    per_bin = num_items // num_bins
    loads = torch.zeros(num_domains, num_bins, dtype=w.dtype)
    fill = torch.zeros(num_domains, num_bins, dtype=torch.int64)
    held = torch.empty(num_domains, num_bins, per_bin, dtype=torch.int64)
    rows = torch.arange(num_domains)
    for item in range(num_items):
        open_loads = loads.masked_fill(fill >= per_bin, float("inf"))
        target = open_loads.argmin(dim=-1)
        held[rows, target, fill[rows, target]] = item
        fill[rows, target] += 1
        loads[rows, target] += w[:, item]
    return held


def round_pack(w: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Round-wise LPT with giants: each round hands the next heaviest items, heaviest first, to
    the bins ordered lightest first; one sort per round, equal bin sizes by construction.

    A "giant" is a bin so heavy that it exceeds the mean bin whatever joins it: one holding a
    very hot item, or (found in a later round) two items from the top of the list. Before each
    round such bins take the lightest items left for all their free positions (the heaviest
    giant the very lightest), as LPT would leave them, and the rounds share the rest among the
    other bins. With two items per bin this is the optimal pairing (heaviest with lightest).

    Args:
        w: [D, n] float64 item loads, sorted descending; n is a multiple of num_bins.
    Returns:
        [D, num_bins, n // num_bins] int64 item index held by each (bin, position).
    """
    num_domains, num_items = w.shape
    per_bin = num_items // num_bins
    if num_bins == 1:
        return torch.arange(num_items).expand(num_domains, 1, num_items).clone()
    # numpy: the rounds are many small operations, each several times cheaper than in torch.
    # The sums come from torch, so the giant tests compare the same numbers on every path.
    wn = w.numpy()
    mean = (w.sum(-1, keepdim=True) / num_bins).numpy()
    # cumulative[:, i] = sum of the first i items: the sum of any run of items in two lookups.
    cumulative = numpy.zeros((num_domains, num_items + 1), dtype=wn.dtype)
    cumulative[:, 1:] = torch.cumsum(w, dim=-1).numpy()
    # Round-major while packing ([k, D, B]): each round's writes are contiguous.
    held = numpy.empty((per_bin, num_domains, num_bins), dtype=numpy.int64)
    bins = numpy.arange(num_bins)
    held[0] = bins
    loads = wn[:, :num_bins].copy()
    giant = numpy.zeros((num_domains, num_bins), dtype=bool)
    head = numpy.full((num_domains, 1), num_bins, dtype=numpy.int64)  # next heavy item
    tail = numpy.full((num_domains, 1), num_items, dtype=numpy.int64)  # end of the light items left
    rows = numpy.arange(num_domains)[:, None]
    open_bins = numpy.full((num_domains, 1), num_bins, dtype=numpy.int64)  # bins not giant
    any_giant = False  # until the first giant, every domain takes the same items per round
    for r in range(1, per_bin):
        rest = per_bin - r
        # Giants are full: their load reads +inf from here on, which also sorts them last.
        if any_giant:
            lo = numpy.maximum(tail - rest, 0)
            lightest = numpy.take_along_axis(cumulative, tail, 1) - numpy.take_along_axis(cumulative, lo, 1)
            new = (loads + lightest > mean) & ~giant
        else:
            new = loads + (cumulative[:, -1:] - cumulative[:, num_items - rest : num_items - rest + 1]) > mean
        num_new = new.sum(-1, keepdims=True)
        most = int(num_new.max())
        if most == 0 and not any_giant:
            lightest_first = numpy.argsort(loads, axis=-1, kind="stable")
            first = num_bins * r
            held[r][rows, lightest_first] = bins + first
            loads += numpy.take_along_axis(wn, held[r], 1)
            head += num_bins
            continue
        any_giant = True
        if most:
            # The k-th heaviest new giant takes items tail - (k+1)*rest .. tail - k*rest - 1.
            if most == 1:
                rank = numpy.zeros_like(head)
            elif r == 1:  # one item per bin so far, heaviest first: bin order is load order
                rank = numpy.cumsum(new, axis=-1) - 1
            else:
                heaviest_first = numpy.argsort(numpy.where(new, -loads, numpy.inf), axis=-1, kind="stable")
                rank = numpy.empty_like(heaviest_first)
                rank[rows, heaviest_first] = bins
            # Clamped: only giants use it.
            start = numpy.minimum(numpy.maximum(tail - (rank + 1) * rest, 0), num_items - rest)
            block = start[None] + numpy.arange(rest).reshape(-1, 1, 1)  # [rest, D, B]
            held[r:] = numpy.where(new, block, held[r:])
            tail -= num_new * rest
            giant |= new
            loads[new] = numpy.inf
            open_bins = (~giant).sum(-1, keepdims=True)
        # The open bins, lightest first, take the next heaviest items (giants sort last).
        lightest_first = numpy.argsort(loads, axis=-1, kind="stable")
        item = numpy.minimum(head + bins.reshape(1, -1), num_items - 1)
        column = numpy.empty((num_domains, num_bins), dtype=numpy.int64)
        column[rows, lightest_first] = item
        held[r] = numpy.where(giant, held[r], column)
        # Each open bin gains its item; giants read +inf whatever is added.
        loads += numpy.take_along_axis(wn, column, 1)
        head += open_bins
    return torch.from_numpy(held.transpose(1, 2, 0).copy())


@dataclass(frozen=True)
class Bins:
    """Items in bins, for every domain.

    Attributes:
        ids: [D, B, k] int64 expert held at each (bin, position).
        w: [D, B, k] float64 its load.
    """

    ids: torch.Tensor
    w: torch.Tensor

    @classmethod
    def from_items(cls, ids: torch.Tensor, w: torch.Tensor, held: torch.Tensor) -> Bins:
        """ids, w: [D, n] items; held: [D, B, k] item index per (bin, position)."""
        flat = held.flatten(1)
        return cls(ids.gather(1, flat).view_as(held), w.gather(1, flat).view_as(held))

    def loads(self) -> torch.Tensor:
        """[D, B] float64 load per bin."""
        return bin_loads(self.w)


def swap_search(
    bins: Bins,
    max_steps: int,
    target: torch.Tensor | None = None,
    prev_ids: torch.Tensor | None = None,
    domains_per_layer: int = 1,
    good_enough: float = 0.0,
    floor: torch.Tensor | None = None,
) -> Bins:
    """Local search: repeatedly swap one item of a domain's hottest bin with an item elsewhere.

    Every step, in every active domain, the swap that leaves the lower max of the two bins
    involved is applied if it cools the hottest bin. Without `target`, a domain is active while
    it holds its layer's hottest bin (domains of a layer are consecutive, `domains_per_layer` of
    them): only that bin bounds the layer's balancedness. With `target` ([D] float64), a domain is
    active while its hottest bin is above it. A domain also stops when no swap helps.

    With `prev_ids` and `target` ([D, B, k], the expert each position held before), swaps
    reaching the target are ranked by how many positions they newly change, so warm starts move
    few weights. Only active domains are computed on, so late steps are cheap. A domain stops at
    the `bin_floor` bound, or within `good_enough` (relative) of its mean bin. The steps run in
    numpy (`search.numpy_search`).

    Args:
        bins: the starting assignment (D domains, B bins, k items per bin).
        max_steps: bound on the number of steps (each step is at most one swap per domain).
        floor: [D] float64 `bin_floor` of the items, if the caller has it (saves a sort).
    Returns:
        the improved assignment.
    """
    ids, w = bins.ids.clone(), bins.w.clone()
    num_domains, num_bins, per_bin = w.shape
    if num_bins < 2:
        return Bins(ids, w)
    # Candidates are scored in float32 on loads scaled to a mean bin of 1 (half the memory
    # traffic of float64); the bins themselves stay exact.
    scale = (w.sum((1, 2)) / num_bins).clamp_min(1e-300)
    w32 = (w / scale.view(-1, 1, 1)).to(torch.float32)
    target32 = None if target is None else (target / scale).to(torch.float32)
    # Stop at the `bin_floor` bound (no swap can go below it), or within `good_enough` of the
    # mean bin (scaled to 1): a perfectly even split is the most any swap could reach.
    if floor is None:
        floor32 = bin_floor(sorted_desc(w32.flatten(1)), per_bin)
    else:
        floor32 = (floor / scale).to(torch.float32)
    floor = torch.maximum(floor32, torch.full((num_domains,), 1.0 + good_enough))
    stuck = torch.zeros(num_domains, dtype=torch.bool)
    prev = None if prev_ids is None else prev_ids.reshape(num_domains, num_bins, per_bin)
    numpy_search(w32, (ids, w, w32), prev, floor, stuck, scale, target32, max_steps, domains_per_layer)
    return Bins(ids, w)


def stable_slots(ids: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor:
    """Reorder each bin's items so experts the bin already held stay in their old positions.

    The n-th copy of an expert in the new bin takes the position of the n-th copy in the old
    bin, if there is one; the other items fill the remaining positions in ascending order.

    Args:
        ids: [D, B, k] int64 new contents; prev_ids: [D, B, k] int64 old contents (-1: empty).
    Returns:
        [D, B, k] int64: the same multiset per bin as `ids`.
    """
    per_bin = ids.shape[-1]
    flat_ids, flat_prev = ids.reshape(-1, per_bin), prev_ids.reshape(-1, per_bin)
    # Bins whose every position already holds its old expert stay as they are.
    changed = (flat_ids != flat_prev).any(-1).nonzero(as_tuple=True)[0]
    out = flat_ids.clone()
    if changed.numel():
        out[changed] = _stable_positions(flat_ids[changed], flat_prev[changed])
    return out.view_as(ids)


def _stable_positions(ids: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor:
    """`stable_slots` of every bin: ids, prev_ids [n, k] int64. Returns [n, k] int64."""
    per_bin = ids.shape[-1]
    earlier = torch.ones(per_bin, per_bin, dtype=torch.bool).tril(-1)
    nth_new = ((ids.unsqueeze(-1) == ids.unsqueeze(-2)) & earlier).sum(-1)
    nth_old = ((prev_ids.unsqueeze(-1) == prev_ids.unsqueeze(-2)) & earlier).sum(-1)
    match = (ids.unsqueeze(-1) == prev_ids.unsqueeze(-2)) & (nth_new.unsqueeze(-1) == nth_old.unsqueeze(-2))
    placed = match.any(-1)
    taken = match.any(-2)
    free_first = torch.argsort(taken.to(torch.int8), dim=-1, stable=True)
    item_rank = (torch.cumsum(~placed, -1) - 1).clamp_min(0)
    pos = torch.where(placed, match.to(torch.int8).argmax(-1), free_first.gather(-1, item_rank))
    return torch.empty_like(ids).scatter_(-1, pos, ids)
