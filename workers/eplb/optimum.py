"""Ceilings on balancedness: lower bounds on the hottest GPU that no placement can beat.

Used by the benchmark to tell a forced tie (both policies at the ceiling) from a missed win.
Each bound holds for every placement with even splits across replicas, any replica counts and
any node layout; where a placement's hottest GPU meets it, that placement is optimal.

- Any layout: no GPU is cooler than the mean, nor than the hottest replica, and the greedy
  counts (`replica_counts`) minimise the hottest replica.
- No redundancy (R = E): counts are forced, so `bin_floor` of the sorted loads bounds every
  packing of k experts per GPU (hottest expert with the k - 1 coldest, and its pigeonhole
  generalisations).
- Two slots per GPU: some GPU pairs the hottest replica with the lightest one. Whichever expert
  j holds the lightest replica, with c_j replicas, the others share the remaining extra slots,
  and with them their hottest replica is at least the greedy one (`_greedy_peaks`), so the
  hottest GPU is at least min over (j, c_j) of max(that, w_j / c_j) + w_j / c_j.
  (Tight where a hot expert's replicas all meet the coldest expert's halves, as with a very
  skewed load; looser where many replicas sit near the hottest and need distinct partners.)
"""

from __future__ import annotations

import numpy
import torch
from moeplane.workers.eplb.sorting import sorted_desc
from moeplane.workers.eplb.types import EplbError


def bin_floor(w: torch.Tensor, per_bin: int) -> torch.Tensor:
    """A lower bound on the hottest bin of any packing with `per_bin` items per bin.

    No bin is cooler than the mean bin. And by pigeonhole, for every m < per_bin some bin holds
    m + 1 of the m*B + 1 heaviest items (B bins), so at least the m + 1 lightest of those, plus
    `per_bin - m - 1` others no lighter than the lightest items overall (m = 0: the heaviest item
    and the lightest partners).

    Args:
        w: [D, n] item loads sorted descending (n a multiple of per_bin).
    Returns:
        [D] same dtype.
    """
    num_items = w.shape[1]
    num_bins = num_items // per_bin
    if w.device.type == "cpu" and w.dtype in (torch.float32, torch.float64):
        return _bin_floor_numpy(w, per_bin)
    floor = w.sum(-1) / num_bins
    light = torch.cumsum(w.flip(-1), dim=-1)  # light[:, j-1]: the j lightest items
    for m in range(per_bin):
        top = w[:, m * num_bins - m : m * num_bins + 1].sum(-1) if m else w[:, 0]
        rest = per_bin - m - 1
        floor = torch.maximum(floor, top + (light[:, rest - 1] if rest else 0.0))
    return floor


def _bin_floor_numpy(w: torch.Tensor, per_bin: int) -> torch.Tensor:
    """`bin_floor` for CPU tensors: every m at once from prefix sums, in numpy (a few small
    operations instead of four torch calls per m). Equal up to float rounding."""
    # float64 prefix sums: differences of float32 prefixes would lose the small terms.
    a = w.detach().numpy().astype(numpy.float64, copy=False)
    num_domains, num_items = a.shape
    num_bins = num_items // per_bin
    m = numpy.arange(per_bin)
    heavy = numpy.zeros((num_domains, num_items + 1), dtype=a.dtype)  # heavy[:, i]: i heaviest
    numpy.cumsum(a, axis=-1, out=heavy[:, 1:])
    light = numpy.zeros((num_domains, per_bin), dtype=a.dtype)  # light[:, j]: j lightest
    numpy.cumsum(a[:, : num_items - per_bin : -1], axis=-1, out=light[:, 1:])
    # Items m*B - m .. m*B (the m + 1 lightest of the m*B + 1 heaviest) with the
    # per_bin - m - 1 lightest items overall.
    top = heavy[:, m * num_bins + 1] - heavy[:, numpy.maximum(m * num_bins - m, 0)]
    top[:, 0] = a[:, 0]
    bound = (top + light[:, per_bin - 1 - m]).max(-1)
    return torch.from_numpy(numpy.maximum(a.sum(-1) / num_bins, bound)).to(w.dtype)


def peak_floor(load: torch.Tensor, num_physical: int, num_gpus: int) -> torch.Tensor:
    """[L] float64 lower bound on the hottest GPU's tokens over every placement.

    Args:
        load: [L, E] token counts; num_physical: R slots per layer (E <= R, a multiple of
            num_gpus); num_gpus: EP ranks.
    """
    load = load.to(torch.float64).cpu()
    num_experts = load.shape[1]
    if num_physical < num_experts or num_physical % num_gpus:
        raise EplbError(
            f"num_physical ({num_physical}) must be >= the {num_experts} experts and a multiple of "
            f"num_gpus ({num_gpus})"
        )
    per_gpu = num_physical // num_gpus
    greedy = _greedy_peaks(load, num_physical - num_experts)  # [L, X + 1]
    floor = torch.maximum(load.sum(-1) / num_gpus, greedy[:, -1])
    if num_physical == num_experts:
        return torch.maximum(floor, bin_floor(sorted_desc(load), per_gpu))
    if per_gpu == 2:
        return torch.maximum(floor, _pair_floor(load, greedy))
    return floor


def balancedness_ceiling(load: torch.Tensor, num_physical: int, num_gpus: int) -> torch.Tensor:
    """[L] float64 upper bound on the balancedness (mean / max GPU load) of any placement."""
    load = load.to(torch.float64).cpu()
    peak = peak_floor(load, num_physical, num_gpus)
    mean = load.sum(-1) / num_gpus
    return torch.where(peak > 0, mean / peak.clamp_min(1e-300), torch.ones_like(mean))


def _greedy_peaks(load: torch.Tensor, extra: int) -> torch.Tensor:
    """[L, extra + 1] float64: the hottest replica after the greedy hands out k extra slots.

    The greedy gives each extra slot to the largest w_e / c_e, so after k slots the hottest
    replica is the (k + 1)-th largest of {w_e / c : c >= 1}; only the `extra` heaviest experts
    can have received any.
    """
    if extra == 0:
        return load.amax(-1, keepdim=True)
    top = torch.topk(load, min(extra, load.shape[1]), dim=-1).values  # [L, t]
    split = (top.unsqueeze(-1) / torch.arange(2, extra + 2, dtype=load.dtype)).flatten(1)
    values = torch.cat([load, split], dim=1)
    return torch.topk(values, extra + 1, dim=-1).values


def _pair_floor(load: torch.Tensor, greedy: torch.Tensor) -> torch.Tensor:
    """[L] the hottest-plus-lightest bound for two slots per GPU (module docstring).

    For expert j with c replicas (c - 1 of the X extra slots), the others' hottest replica is
    at least greedy[X - c + 1] when w_j is below it (adding j back at one replica would
    otherwise beat the greedy optimum); in any case the hottest replica of all is at least
    greedy[X].
    """
    extra = greedy.shape[1] - 1
    c = torch.arange(1, extra + 2, dtype=load.dtype)  # [C]
    others = greedy.flip(-1)  # others[:, c - 1] = greedy[:, X - (c - 1)]
    lightest = load.unsqueeze(-1) / c  # [L, E, C]: expert j's replica with c copies
    hottest = torch.where(load.unsqueeze(-1) < others.unsqueeze(1), others.unsqueeze(1), greedy[:, -1:, None])
    return (torch.maximum(hottest, lightest) + lightest).flatten(1).amin(-1)
