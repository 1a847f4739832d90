"""How good a placement is: per-GPU load, balancedness, and the weights a change moves."""

from __future__ import annotations

import torch
from moeplane.workers.eplb.packing import replica_counts
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement


def gpu_load(load: torch.Tensor, placement: Placement, num_gpus: int) -> torch.Tensor:
    """Tokens each GPU processes when each expert's tokens split evenly across its replicas.

    Args:
        load: [L, E] token counts per logical expert.
        placement: maps for the same L and E.
        num_gpus: EP ranks; slots divide evenly among them.
    Returns:
        [L, num_gpus] float64.
    """
    if tuple(load.shape) != (placement.num_layers, placement.num_logical):
        raise EplbError(
            f"load is {tuple(load.shape)} but the placement covers "
            f"{placement.num_layers} layers x {placement.num_logical} experts"
        )
    per_gpu = placement.slots_per_rank(num_gpus)
    per_replica = load.to(torch.float64).cpu() / placement.logcnt
    slot_load = per_replica.gather(1, placement.phy2log)
    return slot_load.view(placement.num_layers, num_gpus, per_gpu).sum(-1)


def slot_load_per_gpu(slot_counts: torch.Tensor, num_gpus: int) -> torch.Tensor:
    """Measured tokens per GPU from per-slot counts: [L, R] -> [L, num_gpus] float64."""
    num_layers, num_physical = slot_counts.shape
    if num_physical % num_gpus:
        raise EplbError(f"{num_physical} slots do not divide among {num_gpus} GPUs")
    return slot_counts.to(torch.float64).cpu().view(num_layers, num_gpus, -1).sum(-1)


def balancedness(per_gpu: torch.Tensor) -> torch.Tensor:
    """Mean ÷ max of per-GPU load, per layer: [L, G] -> [L] float64 in (0, 1]; 1.0 for an idle layer."""
    per_gpu = per_gpu.to(torch.float64)
    peak = per_gpu.amax(-1)
    mean = per_gpu.mean(-1)
    return torch.where(peak > 0, mean / peak.clamp_min(1e-300), torch.ones_like(mean))


def placement_balancedness(load: torch.Tensor, placement: Placement, num_gpus: int) -> torch.Tensor:
    """[L] float64 balancedness of `load` under `placement` (even split across replicas)."""
    return balancedness(gpu_load(load, placement, num_gpus))


def balancedness_bound(load: torch.Tensor, num_physical: int, num_gpus: int) -> torch.Tensor:
    """[L] float64 upper bound on the balancedness any placement can reach with even splits.

    No GPU can be cooler than the hottest replica, and the fewest-hot replica counts are the greedy
    ones; so balancedness <= mean GPU load / max(mean GPU load, min over counts of max load/count).
    """
    load = load.to(torch.float64).cpu()
    counts = replica_counts(load, num_physical)
    hottest = (load / counts).amax(-1)
    mean = load.sum(-1) / num_gpus
    return torch.where(mean > 0, mean / torch.maximum(mean, hottest).clamp_min(1e-300), torch.ones_like(mean))


def moved_slots(old: Placement, new: Placement, num_gpus: int) -> torch.Tensor:
    """Expert weights that must cross GPUs to go from `old` to `new`, per layer.

    For each GPU, the new slots whose expert the GPU did not hold at all before. Anything the GPU
    already held (in any slot) is at most a local copy, as `plan_moves` makes it.

    Returns:
        [L] int64.
    """
    if old.phy2log.shape != new.phy2log.shape or old.num_logical != new.num_logical:
        raise EplbError(
            f"placements differ in shape: {tuple(old.phy2log.shape)} over {old.num_logical} experts vs "
            f"{tuple(new.phy2log.shape)} over {new.num_logical}"
        )
    num_layers, num_experts = new.num_layers, new.num_logical
    per_gpu = new.slots_per_rank(num_gpus)
    gpu = torch.arange(new.num_physical) // per_gpu
    index = (gpu * num_experts).unsqueeze(0) + new.phy2log
    new_cnt = torch.zeros(num_layers, num_gpus * num_experts, dtype=torch.int64)
    new_cnt.scatter_add_(1, index, torch.ones_like(index))
    old_cnt = torch.zeros_like(new_cnt)
    old_index = (gpu * num_experts).unsqueeze(0) + old.phy2log
    old_cnt.scatter_add_(1, old_index, torch.ones_like(old_index))
    return torch.where(old_cnt == 0, new_cnt, 0).sum(-1)


def bytes_moved(old: Placement, new: Placement, num_gpus: int, expert_bytes: float) -> int:
    """Bytes of expert weights that cross GPUs between two placements (all layers)."""
    return round(int(moved_slots(old, new, num_gpus).sum()) * expert_bytes)
