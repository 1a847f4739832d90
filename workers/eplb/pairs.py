"""Parallel pair rounds: many bins above a target cooled at once, one swap per (hot, cool) pair.

Used where many bins are over target together (a drifting load on the current placement, a
warm start, wide fresh domains) before `packing.swap_search` handles the stragglers.
"""

from __future__ import annotations

import numpy
import torch
from moeplane.workers.eplb.packing import Bins
from moeplane.workers.eplb.search import _REL_EPS, bin_loads


# Idle domains (all loads 0) divide 0 by 0 in the ranking; their swaps never apply.
@numpy.errstate(divide="ignore", invalid="ignore")
def pair_rounds(
    bins: Bins, target: torch.Tensor, max_rounds: int, prev_ids: torch.Tensor | None = None
) -> Bins:
    """Parallel pair balancing: each round pairs every bin above `target` with a cool bin
    (hottest with coolest) and applies, in all pairs at once, the best swap within each pair.

    Pairs never share a bin (the hot half against the cool half), so one round fixes many bins;
    stragglers are left to `swap_search`, which considers every partner. The best swap is the
    one that cools the pair most; with `prev_ids` ([D, B, k], the expert each position held
    before), swaps that bring both bins under the target come first, fewest newly moved weights
    first (warm starts).

    Args:
        bins: [D, B, k] assignment; target: [D] float64 load to get under.
    Returns:
        the improved assignment.
    """
    ids, w = bins.ids.clone(), bins.w.clone()
    _, num_bins, per_bin = w.shape
    if num_bins < 2:
        return Bins(ids, w)
    scale = target.clamp_min(1e-300)
    w32 = (w / scale.view(-1, 1, 1)).to(torch.float32)  # the target is 1 in these units
    # The rounds in numpy (many small operations, several times cheaper than torch's); bin
    # loads are summed by torch, so every comparison sees the same numbers as a torch loop.
    w32n = w32.numpy()
    # Ids as int32 (a copy kept in step with the swaps): half the traffic of the comparisons.
    ids_n = ids.numpy().astype(numpy.int32)
    prev_n = None if prev_ids is None else prev_ids.numpy().astype(numpy.int32)
    limit = numpy.float32(1 + _REL_EPS)
    shrink = numpy.float32(1 - _REL_EPS)
    bin_size = num_bins * per_bin
    # Flat views: swaps write through one 1-D index per array.
    flats = [t.numpy().reshape(-1) for t in (ids, w, w32)] + [ids_n.reshape(-1)]
    for _ in range(max_rounds):
        loads_t = bin_loads(w32)
        loads = loads_t.numpy()
        over_all = loads > limit
        num_over = over_all.sum(-1)
        active = numpy.flatnonzero(num_over)
        n = active.size
        if n == 0:
            break
        # Only domains with a bin over target are computed on, with as many pairs as the worst.
        sub_w, sub_loads = w32n[active], loads[active]
        pairs = min(int(num_over.max()), num_bins // 2)
        # Hottest first: torch's sort, whose order of equal loads the swaps depend on.
        order = torch.argsort(loads_t[torch.from_numpy(active)], dim=-1, descending=True).numpy()
        hot_b, cool_b = order[:, :pairs], order[:, ::-1][:, :pairs]  # [n, h]
        hot_load = numpy.take_along_axis(sub_loads, hot_b, 1)[..., None, None]
        cool_load = numpy.take_along_axis(sub_loads, cool_b, 1)[..., None, None]
        rows = numpy.arange(n)[:, None]
        delta = sub_w[rows, hot_b][..., :, None] - sub_w[rows, cool_b][..., None, :]  # [n, h, k, k]
        after = numpy.maximum(hot_load - delta, cool_load + delta)
        if prev_n is not None:
            sub_ids, sub_prev = ids_n[active], prev_n[active]
            hot_ids, cool_ids = sub_ids[rows, hot_b][..., :, None], sub_ids[rows, cool_b][..., None, :]
            hot_prev, cool_prev = sub_prev[rows, hot_b][..., :, None], sub_prev[rows, cool_b][..., None, :]
            # Positions kept before the swap minus after it: the weights the swap newly moves.
            # (bool viewed as int8: 0 / 1 without a conversion)
            kept_now = (hot_ids == hot_prev).view(numpy.int8) + (cool_ids == cool_prev).view(numpy.int8)
            kept_after = (cool_ids == hot_prev).view(numpy.int8) + (hot_ids == cool_prev).view(numpy.int8)
            added = kept_now - kept_after
            # After/hot is in [0, 1) for useful swaps, so the bands never overlap.
            reaches = (after <= limit).view(numpy.int8)
            key = (added * 2 * reaches + (1 - reaches) * 10) + after / hot_load
        else:
            key = after
        best = key.reshape(n, pairs, -1).argmin(-1)  # [n, h]
        best_after = numpy.take_along_axis(after.reshape(n, pairs, -1), best[..., None], 2)[..., 0]
        hot_now = hot_load[..., 0, 0]
        r, p = numpy.nonzero((hot_now > limit) & (best_after < hot_now * shrink))
        if r.size == 0:
            break
        d, hb, cb, chosen = active[r], hot_b[r, p], cool_b[r, p], best[r, p]
        first = d * bin_size + hb * per_bin + chosen // per_bin
        second = d * bin_size + cb * per_bin + chosen % per_bin
        for t in flats:
            t[first], t[second] = t[second], t[first].copy()
    return Bins(ids, w)
