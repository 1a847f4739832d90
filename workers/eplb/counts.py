"""Replica counts: the greedy optimum for the hottest replica without its loop (`top_counts`),
and for two slots per GPU a search that minimises the hottest GPU after pairing.

With two slots per GPU the optimal packing pairs the heaviest replica with the lightest, so the
freedom left is how many replicas each expert gets. DeepSeek's greedy counts minimise the hottest
single replica; this local search minimises the hottest pair, vectorised over layers.
"""

from __future__ import annotations

import torch
from moeplane.workers.eplb.sorting import sorted_replicas

# Replica-count search: steps (each moves one replica per domain), and the relative cooling a
# move must bring (candidates are scored in float32).
_COUNT_STEPS = 12
_COUNT_DONORS = 6
_COUNT_EPS = 1e-6
# Candidate moves are scored on this many pairs at each end of the sorted replicas, where the
# hot replicas meet their light partners; accepted moves are checked on all pairs.
_COUNT_PAIRS = 12


def top_counts(weight: torch.Tensor, num_slots: int) -> torch.Tensor:
    """`replica_counts` without its loop over slots: the same hottest replica (ties may differ).

    The greedy hands out the extra replicas in decreasing order of `weight / count`, so they go
    to the `num_slots - E` largest values of {w_e / c : c >= 1}, and only the `num_slots - E`
    heaviest experts can receive any: two top-k selections instead of one argmax per slot.

    Args:
        weight: [D, E] float64 loads; num_slots: slots per domain (>= E).
    Returns:
        [D, E] int64 counts, each >= 1, summing to `num_slots` per domain.
    """
    num_domains, num_experts = weight.shape
    extra = num_slots - num_experts
    counts = torch.ones(num_domains, num_experts, dtype=torch.int64)
    if extra <= 0:
        return counts
    top_w, top_e = torch.topk(weight, min(extra, num_experts), dim=-1)  # [D, k]
    per_replica = top_w.unsqueeze(-1) / torch.arange(1, extra + 1, dtype=weight.dtype)  # [D, k, extra]
    chosen = torch.topk(per_replica.flatten(1), extra, dim=-1).indices // extra
    return counts.scatter_add_(1, top_e.gather(1, chosen), torch.ones_like(chosen))


def pair_counts(
    weight: torch.Tensor, counts: torch.Tensor, max_steps: int = _COUNT_STEPS, num_donors: int = _COUNT_DONORS
) -> torch.Tensor:
    """`_pair_search`'s counts."""
    return _pair_search(weight, counts, max_steps, num_donors)[0]


def _pair_search(
    weight: torch.Tensor, counts: torch.Tensor, max_steps: int, num_donors: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replica counts for two slots per GPU: minimise the hottest GPU, not the hottest replica.

    With two slots per GPU the optimal packing pairs the heaviest replica with the lightest, so
    a GPU's load depends on the whole multiset of replica loads; DeepSeek's greedy counts only
    minimise its largest member. From the greedy counts, each step moves one replica between
    experts: from one of the `num_donors` experts that its removal heats the least, to an expert
    of the hottest pair, or to the heaviest or lightest expert (splitting a cold expert gives the
    hot replicas lighter partners). All candidates of all domains are scored at once without a
    sort (`_moved_peaks`); the best is kept if it cools the hottest pair. Never worse than the
    start, at most `max_steps` steps.

    Args:
        weight: [D, E] float64 loads.
        counts: [D, E] int64 starting counts (>= 1, an even sum per domain).
    Returns:
        [D, E] int64 counts, each >= 1, with the same sums; and [D] float64 their hottest pair
        (zeros where the replicas do not pair up).
    """
    counts = counts.clone()
    num_domains, num_experts = counts.shape
    if num_experts < 2 or int(counts[0].sum()) % 2:
        return counts, torch.zeros(num_domains, dtype=torch.float64)
    ids, w = sorted_replicas(weight, counts)
    num_pairs = min(w.shape[1] // 2, _COUNT_PAIRS)
    peak, hot = _pair_peaks(w)
    active = peak > 0
    num_donors = min(num_donors, num_experts)
    for _ in range(max_steps):
        rows = active.nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            break
        if rows.numel() == num_domains:
            state = (weight, counts, ids, w, peak, hot)
        else:  # late steps: only the few domains still improving
            state = (weight[rows], counts[rows], ids[rows], w[rows], peak[rows], hot[rows])
        better, new_counts, new_ids, new_w, new_peak, new_hot = _count_step(*state, num_donors, num_pairs)
        active[rows] = better
        rows = rows[better]
        counts[rows], ids[rows], w[rows] = new_counts[better], new_ids[better], new_w[better]
        peak[rows], hot[rows] = new_peak[better], new_hot[better]
    return counts, peak


def _count_step(
    weight: torch.Tensor,
    counts: torch.Tensor,
    ids: torch.Tensor,
    w: torch.Tensor,
    peak: torch.Tensor,
    hot: torch.Tensor,
    num_donors: int,
    num_pairs: int,
) -> tuple[torch.Tensor, ...]:
    """One step of `pair_counts` in n domains: ([n] bool the move cools the hottest pair, then
    the moved counts, replicas (ids, w), and hottest pair (load, position) as `_pair_peaks`)."""
    num_domains, num_items = w.shape
    ends = torch.tensor([0, num_items - 1]).expand(num_domains, -1)
    spots = torch.cat([hot.view(-1, 1), num_items - 1 - hot.view(-1, 1), ends], dim=1)
    recipients = ids.gather(1, spots)  # [n, 4]: the hottest pair's experts, the extremes
    heated = torch.where(counts >= 2, weight / (counts - 1), float("inf"))
    heat, donors = torch.topk(heated, num_donors, dim=-1, largest=False)  # [n, K]
    donor = donors.repeat_interleave(spots.shape[1], dim=1)  # [n, K*4]
    recipient = recipients.repeat(1, num_donors)
    valid = torch.isfinite(heat).repeat_interleave(spots.shape[1], dim=1) & (donor != recipient)
    scores = _moved_peaks(weight, counts, ids, w, donor, recipient, num_pairs)
    best_score, best = scores.masked_fill(~valid, float("inf")).min(dim=-1, keepdim=True)
    d, r = donor.gather(1, best), recipient.gather(1, best)  # [n, 1]
    one = torch.ones(num_domains, 1, dtype=torch.int64)
    moved = counts.scatter_add(1, d, -one).scatter_add(1, r, one)
    # Exactly, over every pair: a move counts only if it really cools the hottest pair.
    a_cnt, b_cnt = moved.gather(1, d), moved.gather(1, r)
    a = (weight.gather(1, d) / a_cnt).unsqueeze(-1)
    b = (weight.gather(1, r) / b_cnt).unsqueeze(-1)
    new_w, new_ids = _merged_head(
        w, ids, d, r, a, a_cnt.unsqueeze(-1), b, b_cnt.unsqueeze(-1), num_items, with_ids=True
    )
    assert new_ids is not None
    new_w, new_ids = new_w.squeeze(1), new_ids.squeeze(1)
    new_peak, new_hot = _pair_peaks(new_w)
    limit = peak * (1 - _COUNT_EPS)
    better = (best_score.squeeze(1) < limit) & (new_peak < limit)
    return better, moved, new_ids, new_w, new_peak, new_hot


def _pair_start(
    weight: torch.Tensor, searched: torch.Tensor, searched_peak: torch.Tensor, prev_local: torch.Tensor
) -> torch.Tensor:
    """Counts for a rebalance: the previous ones where the previous placement is still whole in
    the domain and pairs its hottest GPU no hotter than the searched counts do, else those.

    weight: [D, E] float64; searched: [D, E] int64 with [D] `searched_peak`, their hottest pair;
    prev_local: [D, B, 2] old ids (-1: gone). Returns [D, E] int64.
    """
    flat = prev_local.flatten(1)
    prev = torch.zeros_like(searched).scatter_add_(1, flat.clamp_min(0), torch.ones_like(flat))
    whole = (flat >= 0).all(-1) & (prev >= 1).all(-1)
    prev = torch.where(whole.view(-1, 1), prev, searched)
    use_prev = _pair_peaks(sorted_replicas(weight, prev)[1])[0] <= searched_peak
    return torch.where(use_prev.view(-1, 1), prev, searched)


def _pair_peaks(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hottest pair of items sorted descending ([D, n], n even), paired heaviest with lightest:
    ([D] its load, [D] int64 the position of its heavier item)."""
    half = w.shape[-1] // 2
    return (w[..., :half] + w[..., half:].flip(-1)).max(dim=-1)


def _moved_peaks(
    weight: torch.Tensor,
    counts: torch.Tensor,
    ids: torch.Tensor,
    w: torch.Tensor,
    donor: torch.Tensor,
    recipient: torch.Tensor,
    num_pairs: int,
) -> torch.Tensor:
    """The hottest of the `num_pairs` outermost pairs after moving one replica from `donor` to
    `recipient`, per candidate (computed in float32 on loads scaled by the mean replica).

    Merges instead of sorting, and only at the two ends of the sorted list: a move takes the two
    experts' items out, the rest keep their order and shift by the new items heavier than them,
    and the new items fill the gaps as two blocks. The caller checks an accepted move exactly,
    since a pair further in may be the hottest.

    Args:
        weight: [n, E] float64 loads; counts: [n, E] int64 (donors' >= 2).
        ids, w: [n, N] the current replicas sorted descending (`expand_replicas`).
        donor, recipient: [n, C] int64 candidate experts (distinct within a candidate).
    Returns:
        [n, C] float64.
    """
    num_items = w.shape[1]
    scale = (weight.sum(-1, keepdim=True) / num_items).clamp_min(1e-300)
    a_cnt = counts.gather(1, donor) - 1
    b_cnt = counts.gather(1, recipient) + 1
    a = (weight.gather(1, donor) / a_cnt.clamp_min(1) / scale).to(torch.float32).unsqueeze(-1)
    b = (weight.gather(1, recipient) / b_cnt / scale).to(torch.float32).unsqueeze(-1)
    a_cnt, b_cnt = a_cnt.unsqueeze(-1), b_cnt.unsqueeze(-1)
    v = (w / scale).to(torch.float32)
    # The window must still hold `num_pairs` items after the move takes the two experts' out.
    width = min(num_items, num_pairs + int((a_cnt + b_cnt).max()))
    # Both ends in one merge: the tail, negated and reversed, is a descending head too.
    heads_v = torch.stack([v[:, :width], -v.flip(-1)[:, :width]], dim=1).view(-1, width)
    heads_ids = torch.stack([ids[:, :width], ids.flip(-1)[:, :width]], dim=1).view(-1, width)

    def twice(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1).expand(-1, 2, *x.shape[1:]).reshape(-1, *x.shape[1:])

    sign = torch.tensor([1.0, -1.0], dtype=torch.float32).repeat(v.shape[0]).view(-1, 1, 1)
    merged = _merged_head(
        heads_v,
        heads_ids,
        twice(donor),
        twice(recipient),
        twice(a) * sign,
        twice(a_cnt),
        twice(b) * sign,
        twice(b_cnt),
        num_pairs,
    )[0].view(v.shape[0], 2, donor.shape[1], num_pairs)
    top, bottom = merged[:, 0], merged[:, 1]
    return (top - bottom).amax(-1).to(torch.float64) * scale


def _merged_head(
    v: torch.Tensor,
    ids: torch.Tensor,
    donor: torch.Tensor,
    recipient: torch.Tensor,
    a: torch.Tensor,
    a_cnt: torch.Tensor,
    b: torch.Tensor,
    b_cnt: torch.Tensor,
    keep: int,
    with_ids: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first `keep` items, per candidate, of a descending list after its `donor` and
    `recipient` items give way to `a_cnt` items of `a` and `b_cnt` items of `b`.

    v, ids: [n, W] the list's first W items (W >= keep + the items removed); donor, recipient:
    [n, C]; a, b: [n, C, 1] same dtype as v; a_cnt, b_cnt: [n, C, 1] int64.
    Returns [n, C, keep] values and, `with_ids`, [n, C, keep] int64 their experts (else None).
    """
    v3 = v.unsqueeze(1)
    kept = (ids.unsqueeze(1) != donor.unsqueeze(-1)) & (ids.unsqueeze(1) != recipient.unsqueeze(-1))
    # Ties: kept items before new ones, the donor's block before the recipient's.
    pos = torch.cumsum(kept, dim=-1) - 1
    pos += torch.where(a > v3, a_cnt, 0)
    pos += torch.where(b > v3, b_cnt, 0)
    a_start = (kept & (v3 >= a)).sum(-1, keepdim=True) + torch.where(b > a, b_cnt, 0)
    # Every slot that neither a kept item nor the donor's block takes is the recipient's.
    slot = torch.arange(keep)
    in_a = (slot >= a_start) & (slot < a_start + a_cnt)
    out = torch.empty(*kept.shape[:2], keep + 1, dtype=v.dtype)
    out[..., :keep] = torch.where(in_a, a, b)
    # Items beyond the head, and invalid candidates (a donor with one replica, donor ==
    # recipient; the caller masks their scores), write to the spare last column. Kept items
    # have pos >= 0.
    target = torch.where(kept & (pos < keep), pos, keep)
    out.scatter_(-1, target, v3.expand_as(kept).contiguous())
    if not with_ids:
        return out[..., :keep], None
    out_ids = torch.empty(*kept.shape[:2], keep + 1, dtype=torch.int64)
    out_ids[..., :keep] = torch.where(in_a, donor.unsqueeze(-1), recipient.unsqueeze(-1))
    out_ids.scatter_(-1, target, ids.unsqueeze(1).expand_as(kept).contiguous())
    return out[..., :keep], out_ids[..., :keep]
