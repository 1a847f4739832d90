"""The balancer's one entry point: expert load in, versioned placement out. Pure: no I/O, no Ray."""

from __future__ import annotations

import torch
from moeplane.api.enums import EplbAlgorithm
from moeplane.workers.eplb.balanced import balanced_placement
from moeplane.workers.eplb.deepseek import deepseek_global, deepseek_hierarchical
from moeplane.workers.eplb.types import EplbError, EplbLayout
from moeplane.workers.placement import Placement


def check_load(load: torch.Tensor) -> torch.Tensor:
    """A load matrix as [L, E] float64 on the CPU, or EplbError naming what is wrong."""
    if not isinstance(load, torch.Tensor):
        raise EplbError(f"load must be a torch.Tensor of shape [layers, experts], got {type(load).__name__}")
    if load.dim() != 2 or load.shape[0] < 1 or load.shape[1] < 1:
        raise EplbError(f"load must have shape [layers, experts], got {tuple(load.shape)}")
    if load.is_complex() or load.dtype == torch.bool:
        raise EplbError(f"load must hold real token counts, got dtype {load.dtype}")
    out = load.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(out).all()):
        layer, expert = (~torch.isfinite(out)).nonzero()[0].tolist()
        raise EplbError(f"load[{layer}, {expert}] is {out[layer, expert].item()}; loads must be finite")
    if bool((out < 0).any()):
        layer, expert = (out < 0).nonzero()[0].tolist()
        raise EplbError(f"load[{layer}, {expert}] is {out[layer, expert].item()}; loads must be >= 0")
    return out


def rebalance(
    load: torch.Tensor,
    num_physical: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    algorithm: EplbAlgorithm = EplbAlgorithm.AUTO,
    previous: Placement | None = None,
    *,
    locality_slack: float = 0.05,
) -> Placement:
    """Place `num_physical` expert slots per layer so that GPU loads are even.

    Args:
        load: [L, E] token counts (any real dtype, >= 0) per logical expert, e.g. a window sum.
        num_physical: R slots per layer, E <= R, a multiple of `num_gpus` (R - E redundant).
        num_groups: expert groups (E a multiple of it); with `num_nodes` dividing it, groups stay
            on nodes (the hierarchical contract of DeepSeek's EPLB, kept by AUTO too).
        num_nodes: nodes in the EP group; `num_gpus` must be a multiple of it.
        num_gpus: EP ranks; GPU g holds slots g*k .. g*k+k-1 with k = R / num_gpus.
        algorithm: AUTO (ours), or DeepSeek's HIERARCHICAL / GLOBAL baselines.
        previous: the current placement ([L, R] over E experts). AUTO keeps replicas in place
            where balance allows; the baselines ignore it. Versions follow it.
        locality_slack: AUTO only. Where groups fit on nodes, a layer keeps its groups on
            their nodes unless that caps its balancedness more than this fraction below a global
            placement's (0: always global when that is better; 1: always keep groups local).
            With slack < 1, node-local layers may also trade up to 3 cold replicas per rebalance
            across nodes (at most 12 per layer off their group's node) where that cools the
            hottest GPU; 1 keeps groups strictly local.
    Returns:
        a Placement with phy2log [L, R], log2phy [L, E, max_replicas] (padded -1), logcnt [L, E],
        version previous.version + 1 (0 without `previous`).
    Raises:
        EplbError: on a malformed load, layout or previous placement.
    """
    load = check_load(load)
    num_layers, num_logical = load.shape
    layout = EplbLayout(
        num_layers=num_layers,
        num_logical=num_logical,
        num_physical=num_physical,
        num_groups=num_groups,
        num_nodes=num_nodes,
        num_gpus=num_gpus,
    )
    algorithm = EplbAlgorithm(algorithm)
    if not 0.0 <= locality_slack <= 1.0:
        raise EplbError(f"locality_slack must lie in [0, 1], got {locality_slack}")
    prev_map = None if previous is None else _check_previous(previous, layout)
    if algorithm is EplbAlgorithm.HIERARCHICAL and num_groups % num_nodes:
        raise EplbError(
            f"the hierarchical algorithm needs num_groups ({num_groups}) to be a multiple of "
            f"num_nodes ({num_nodes}); use the global or auto algorithm"
        )
    # Inference mode skips autograd bookkeeping on the many small tensor operations; the maps are
    # cloned out of it so callers get ordinary tensors.
    with torch.inference_mode():
        if algorithm is EplbAlgorithm.AUTO:
            phy2log = balanced_placement(load, layout, prev_map, locality_slack)
        elif algorithm is EplbAlgorithm.HIERARCHICAL:
            phy2log = deepseek_hierarchical(load, layout)
        else:
            phy2log = deepseek_global(load, layout)
    phy2log = phy2log.clone()
    version = 0 if previous is None else previous.version + 1
    return Placement.from_phy2log(phy2log, num_logical, version=version)


def _check_previous(previous: Placement, layout: EplbLayout) -> torch.Tensor:
    expected = (layout.num_layers, layout.num_physical)
    if tuple(previous.phy2log.shape) != expected or previous.num_logical != layout.num_logical:
        raise EplbError(
            f"previous placement is {tuple(previous.phy2log.shape)} slots over {previous.num_logical} "
            f"experts, but this rebalance is {expected} over {layout.num_logical}; pass previous=None "
            "after resizing the EP group"
        )
    return previous.phy2log.to(torch.int64).cpu()
