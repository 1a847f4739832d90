"""Rebalancing from the current placement without placing afresh.

A rebalance mostly follows a drift in load that the current placement absorbs with a few swaps;
these shortcuts try that first and report which layers they settled, so that only the rest go
through replica counts, node assignment and a fresh plan:
- `nudge`: coolest-pair swaps toward an even split, replica counts kept.
- `strays`: in node-local layers, a few cold replicas trade places across nodes where that cools
  the hottest GPU (a hot expert left with its group's coldest partners).
- `optimal_and_local`: without redundancy `bin_floor` is tight, so a layer that meets it is optimal.
"""

from __future__ import annotations

import numpy
import torch
from moeplane.workers.eplb.optimum import bin_floor
from moeplane.workers.eplb.packing import Bins, swap_search
from moeplane.workers.eplb.pairs import pair_rounds
from moeplane.workers.eplb.search import bin_loads
from moeplane.workers.eplb.sorting import sorted_desc
from moeplane.workers.eplb.types import EplbLayout
from moeplane.workers.eplb.warm import node_homes

# Relative slack when comparing loads that should be equal up to float rounding.
_TOL = 1e-9
# Relative margin under the target for the float32 searches (twice their tolerance).
_SEARCH_MARGIN = 2e-5
# Node-local layers: swaps per layer that may send an expert off its group's node (`strays`).
STRAY_SWAPS = 3
# ... tried only in layers whose hottest GPU carries this many times the mean GPU's load.
_STRAY_ABOVE = 2.0
# A rebalance that keeps the current placement plus a few stray swaps (no redundancy) accepts at
# most this many replicas outside their group's node per layer; beyond it the layer is re-placed.
MAX_STRAYS = 4 * STRAY_SWAPS


def nudge(
    load: torch.Tensor, previous: torch.Tensor, layout: EplbLayout, slack: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The current placement, its replica counts kept, with swaps toward an even split.

    Most rebalances follow a drift in load, which the current placement absorbs with a few
    swaps; counts, node assignment and a fresh plan are only needed where it cannot. Layers
    whose hottest GPU ends within `slack` of the mean GPU are done (no placement is
    cooler than the mean), if they were placed globally before (a node-local layer's swaps must
    stay within nodes: it takes the full path) and the bound allows it at all.

    Args:
        load: [L, E] float64; previous: [L, R] int64 phy2log; slack: relative, e.g. 5e-3.
    Returns:
        [L, R] int64 phy2log (`previous` itself where no layer is reachable: do not write to
        it); [L] bool the layers done.
    """
    num_layers, num_physical = previous.shape
    num_gpus, per_gpu = layout.num_gpus, layout.slots_per_gpu
    if num_physical == load.shape[1]:  # no redundancy: one replica each
        per_replica = load
    else:
        counts = torch.zeros_like(load, dtype=torch.int64)
        counts.scatter_add_(1, previous, torch.ones_like(previous))
        per_replica = load / counts.clamp_min(1)
    target = load.sum(-1) / num_gpus * (1 + slack)
    # Hottest replica with the coolest partners: a floor no swap gets under.
    reachable = per_replica.amax(-1) + (per_gpu - 1) * per_replica.amin(-1) <= target
    if not bool(reachable.any()):  # e.g. no redundancy and a skewed load: nothing to try
        return previous, reachable
    ids = previous.view(num_layers, num_gpus, per_gpu)
    w = per_replica.gather(1, previous).view_as(ids)
    if layout.hierarchical_fits:
        groups, nodes = layout.num_groups, layout.num_nodes
        reachable &= ~node_homes(previous, groups, nodes, layout.num_logical // groups)[2]
    peak = w.sum(-1).amax(-1)
    rows = (reachable & (peak > target * (1 + _TOL))).nonzero(as_tuple=True)[0]
    out = previous.clone()
    if rows.numel():
        # The searches stop within 1e-5 of their target (float32 scores): aim that much lower,
        # so that a layer they settle meets `target` exactly, not just short of it.
        sub_target = target[rows] * (1 - _SEARCH_MARGIN)
        # The coolest swap of each pair, not `warm`'s ranking by weights moved: every swap moves
        # two replicas either way, the ranking doubles the search's cost, and the drift's
        # weights moved stay near a fifth of the baselines'. The floor is left at the mean GPU:
        # every layer here can reach its target, and the target is what stops the search.
        moved = pair_rounds(Bins(ids[rows], w[rows]), sub_target, max_rounds=4)
        moved = swap_search(moved, num_gpus // 2 + 2, target=sub_target, floor=torch.zeros_like(sub_target))
        out[rows] = moved.ids.view(rows.numel(), num_physical)
        peak[rows] = moved.loads().amax(-1)
    return out, reachable & (peak <= target * (1 + _TOL))


def strays(load: torch.Tensor, phy2log: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """Node-local layers, their hottest GPU cooled by up to `STRAY_SWAPS` swaps with the
    layer's coldest replicas, wherever they sit.

    Node-local placement can leave the hottest GPU with partners that are cold within the node
    but not across the layer (with no redundancy: a hot expert with its group's coldest). Each
    swap trades one of its cold replicas (below the layer's mean replica load) for one of the
    layer's `k` coldest (k slots per GPU) on another GPU, the trade that leaves the cooler of
    the two GPUs' maxima; it is taken only where it cools the hottest GPU, so a layer never
    gets less balanced. At most 2 * `STRAY_SWAPS` replicas leave their group's node, all cold:
    they carry a small share of the layer's tokens.

    Args:
        load: [L, E] float64; phy2log: [L, R] int64 with groups on their nodes.
    Returns:
        [L, R] int64.
    """
    num_layers, num_physical = phy2log.shape
    per_gpu = num_physical // num_gpus
    ids = phy2log.clone()
    if num_physical == load.shape[1]:  # no redundancy: one replica each, its expert's load
        w = load.gather(1, ids)
    else:
        counts = torch.zeros_like(load, dtype=torch.int64).scatter_add_(1, phy2log, torch.ones_like(phy2log))
        w = (load / counts.clamp_min(1)).gather(1, ids)
    # Only a GPU well above the layer's mean can gain: one with a hot expert that node-local
    # packing paired with its group's coldest. Balanced layers are left as they are.
    gpu = w.view(num_layers, num_gpus, per_gpu).sum(-1)
    todo = (gpu.amax(-1) > gpu.mean(-1) * _STRAY_ABOVE).nonzero(as_tuple=True)[0]
    if todo.numel() == 0:
        return ids
    if todo.numel() < num_layers:
        out = ids.clone()
        out[todo] = strays(load[todo], phy2log[todo], num_gpus)
        return out
    # The swaps in numpy on views of `ids` and `w` (small arrays, several times cheaper than
    # torch); GPU sums and the coldest replicas still come from torch, so that equal loads
    # resolve as before.
    ids_n, w_n = ids.numpy(), w.numpy()
    rows = numpy.arange(num_layers)
    own = numpy.arange(per_gpu)
    cold_bar = (load.sum(-1, keepdim=True) / num_physical).numpy()  # [L, 1] the mean replica
    for _ in range(STRAY_SWAPS):
        gpu_n = bin_loads(w.view(num_layers, num_gpus, per_gpu)).numpy()
        hot = gpu_n.argmax(-1)
        hot_load = gpu_n[rows, hot]
        cold_w_t, cold_slot_t = torch.topk(w, per_gpu, dim=-1, largest=False)  # [L, k]
        cold_w, cold_slot = cold_w_t.numpy(), cold_slot_t.numpy()
        hot_slot = hot[:, None] * per_gpu + own  # [L, k]
        hot_w = numpy.take_along_axis(w_n, hot_slot, 1)
        delta = hot_w[:, :, None] - cold_w[:, None, :]  # [L, k, k]
        cold_gpu = cold_slot // per_gpu
        after = numpy.maximum(
            hot_load[:, None, None] - delta, numpy.take_along_axis(gpu_n, cold_gpu, 1)[:, None, :] + delta
        )
        after[(cold_gpu == hot[:, None])[:, None, :] | (hot_w > cold_bar)[:, :, None]] = numpy.inf
        flat = after.reshape(num_layers, -1)
        best = flat.argmin(-1)
        cools = flat[rows, best] < hot_load * (1 - _TOL)
        if not cools.any():
            break
        r = rows[cools]
        a = hot_slot[r, best[cools] // per_gpu]
        b = cold_slot[r, best[cools] % per_gpu]
        for t in (ids_n, w_n):
            t[r, a], t[r, b] = t[r, b], t[r, a].copy()
    return ids


def optimal_and_local(load: torch.Tensor, phy2log: torch.Tensor, layout: EplbLayout) -> torch.Tensor:
    """[L] bool: layers (no redundancy) whose hottest GPU meets `bin_floor` of the loads, with
    at most `MAX_STRAYS` replicas outside their group's home node."""
    num_layers = phy2log.shape[0]
    per_gpu = layout.slots_per_gpu
    gpu = load.gather(1, phy2log).view(num_layers, layout.num_gpus, per_gpu).sum(-1)
    floor = bin_floor(sorted_desc(load), per_gpu)
    group_size = layout.num_logical // layout.num_groups
    on_node = node_homes(phy2log, layout.num_groups, layout.num_nodes, group_size)[0]
    strays = (on_node.sum(-1) - on_node.amax(-1)).sum(-1)
    return (gpu.amax(-1) <= floor * (1 + _TOL)) & (strays <= MAX_STRAYS)
