"""The swap search's loop in numpy, and the bin sums it shares with torch code.

`packing.swap_search` runs here: its steps are a few dozen operations on small arrays, several
times cheaper in numpy than in torch. Bin loads are summed by torch (`bin_loads`), so the
comparisons see the same float32 sums as the rest of the balancer.
"""

from __future__ import annotations

import numpy
import torch

# A swap must shrink the hottest bin by more than this fraction of its load; it keeps float32
# rounding in the candidate scores from cycling the search.
_REL_EPS = 1e-5


# Idle domains (all loads 0) divide 0 by 0 in the ranking; their swaps never apply.
@numpy.errstate(divide="ignore", invalid="ignore")
def numpy_search(
    w32: torch.Tensor,
    tensors: tuple[torch.Tensor, ...],
    prev_ids: torch.Tensor | None,
    floor: torch.Tensor,
    stuck: torch.Tensor,
    scale: torch.Tensor,
    target32: torch.Tensor | None,
    max_steps: int,
    domains_per_layer: int,
) -> None:
    """`swap_search`'s loop, every bin a partner, in place on `tensors` (ids, w, w32: [D, B, k];
    `prev_ids` [D, B, k] for the move-aware ranking, which needs `target32`)."""
    _, num_bins, per_bin = w32.shape
    bin_size = num_bins * per_bin
    # Ids as int32 (a copy kept in step with the swaps): half the traffic of the comparisons.
    ids_n = tensors[0].numpy().astype(numpy.int32)
    prev_n = None if prev_ids is None else prev_ids.numpy().astype(numpy.int32)
    flats = [t.numpy().reshape(-1) for t in tensors] + [ids_n.reshape(-1)]
    w32n, floor_n, stuck_n = w32.numpy(), floor.numpy(), stuck.numpy()
    above = numpy.float32(1 + _REL_EPS)
    below = numpy.float32(1 - _REL_EPS)
    target_n = None if target32 is None else target32.numpy() * above
    tokens = scale.numpy()
    for _ in range(max_steps):
        all_loads = bin_loads(w32).numpy()
        hot_all = all_loads.max(-1)
        stuck_n |= hot_all <= floor_n * above
        if target_n is not None:
            active = ~stuck_n & (hot_all > target_n)
        elif domains_per_layer == 1:
            active = ~stuck_n
        else:
            hot_tokens = (hot_all.astype(numpy.float64) * tokens).reshape(-1, domains_per_layer)
            is_hot = hot_tokens >= hot_tokens.max(-1, keepdims=True) * (1 - _REL_EPS)
            by_layer = stuck_n.reshape(-1, domains_per_layer)
            blocked = (by_layer & is_hot).any(-1, keepdims=True)
            active = (~by_layer & is_hot & ~blocked).reshape(-1)
        rows = numpy.flatnonzero(active)
        n = rows.size
        if n == 0:
            break
        sub_w, loads = w32n[rows], all_loads[rows]
        local = numpy.arange(n)
        hot = loads.argmax(-1)
        hot_load = loads[local, hot]
        delta = sub_w[local, hot][:, :, None, None] - sub_w[:, None]  # [n, k, B, k]
        after = numpy.maximum(hot_load[:, None, None, None] - delta, loads[:, None, :, None] + delta)
        flat_after = after.reshape(n, -1)
        if prev_n is not None and target_n is not None:
            sub_ids, sub_prev = ids_n[rows], prev_n[rows]
            ids_i = sub_ids[local, hot][:, :, None, None]
            prev_i = sub_prev[local, hot][:, :, None, None]
            ids_j, prev_j = sub_ids[:, None], sub_prev[:, None]
            # (bool viewed as int8: 0 / 1 without a conversion)
            kept_now = (ids_i == prev_i).view(numpy.int8) + (ids_j == prev_j).view(numpy.int8)
            kept_after = (ids_j == prev_i).view(numpy.int8) + (ids_i == prev_j).view(numpy.int8)
            added = kept_now - kept_after
            reaches = (after <= target_n[rows][:, None, None, None]).view(numpy.int8)
            # Swaps reaching the target first, fewest new moves first, then the coolest result;
            # the rest after them, coolest first (useful swaps have after/hot in [0, 1)).
            key = (added * 2 * reaches + (1 - reaches) * 10) + after / hot_load[:, None, None, None]
            best = key.reshape(n, -1).argmin(-1)
        else:
            best = flat_after.argmin(-1)
        improves = flat_after[local, best] < hot_load * below
        stuck_n[rows[~improves]] = True
        if not improves.any():
            continue
        r, b, best = rows[improves], hot[improves], best[improves]
        pi, other = numpy.divmod(best, bin_size)
        j, pj = numpy.divmod(other, per_bin)
        first = r * bin_size + b * per_bin + pi
        second = r * bin_size + j * per_bin + pj
        for t in flats:
            t[first], t[second] = t[second], t[first].copy()


def bin_loads(w: torch.Tensor) -> torch.Tensor:
    """[D, B] load per bin of [D, B, k] items. Two items: one add, exactly `w.sum(-1)` (a sum
    over a two-wide last dim is a slow reduction on the CPU)."""
    return w[..., 0] + w[..., 1] if w.shape[-1] == 2 else w.sum(-1)
