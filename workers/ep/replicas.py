"""Replica choice: which physical slot serves each (token, routed expert) pair.

A logical expert with several replicas is served by a replica on this rank when one exists (its
tokens then never cross the network); otherwise replica `(token + rank) % count`, which spreads
consecutive tokens and different source ranks over the replicas deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from moeplane.workers.placement import Placement, PlacementError


@dataclass(frozen=True)
class LayerPlacement:
    """One MoE layer's expert maps as seen from one rank (precomputed once per placement version).

    Attributes:
        phy2log: [R] int64 logical expert of each physical slot.
        log2phy: [E, max_replicas] int64 physical slots of each logical expert (-1 padding).
        logcnt: [E] int64 replicas of each logical expert.
        local_slot: [E] int64 the lowest physical slot on this rank holding the expert, or -1.
        primary: [E] int64 the local slot, else the expert's only slot, else -1 (spread per token).
        slots_per_rank: S; physical slot r lives on rank r // S at local slot r % S.
        rank / num_ranks: the viewing rank and the EP group size.
        version: the placement's version.
    """

    phy2log: torch.Tensor
    log2phy: torch.Tensor
    logcnt: torch.Tensor
    local_slot: torch.Tensor
    primary: torch.Tensor
    slots_per_rank: int
    rank: int
    num_ranks: int
    version: int

    @classmethod
    def of(
        cls, placement: Placement, layer: int, rank: int, num_ranks: int,
        device: torch.device | str = "cpu",
    ) -> LayerPlacement:
        if not 0 <= layer < placement.num_layers:
            raise PlacementError(f"MoE layer {layer} outside the placement's {placement.num_layers} layers")
        if not 0 <= rank < num_ranks:
            raise PlacementError(f"rank {rank} outside an EP group of {num_ranks}")
        slots = placement.slots_per_rank(num_ranks)
        phy2log = placement.phy2log[layer]
        own = torch.arange(rank * slots, (rank + 1) * slots, dtype=torch.int64)
        none = placement.num_physical
        local = torch.full((placement.num_logical,), none, dtype=torch.int64)
        local.scatter_reduce_(0, phy2log[own], own, reduce="amin")
        local[local == none] = -1
        logcnt = placement.logcnt[layer]
        single = torch.where(logcnt == 1, placement.log2phy[layer, :, 0], -1)
        primary = torch.where(local >= 0, local, single)
        return cls(
            phy2log=phy2log.to(device),
            log2phy=placement.log2phy[layer].to(device),
            logcnt=placement.logcnt[layer].to(device),
            local_slot=local.to(device),
            primary=primary.to(device),
            slots_per_rank=slots,
            rank=rank,
            num_ranks=num_ranks,
            version=placement.version,
        )

    @property
    def local_experts(self) -> torch.Tensor:
        """[S] int64 logical expert held by each of this rank's slots."""
        start = self.rank * self.slots_per_rank
        return self.phy2log[start : start + self.slots_per_rank]


def choose_replicas(topk_ids: torch.Tensor, placement: LayerPlacement) -> torch.Tensor:
    """topk_ids [T, K] int64 logical experts -> [T, K] int64 physical slots (local replica first)."""
    primary = placement.primary.index_select(0, topk_ids.reshape(-1)).view_as(topk_ids)
    # On the CPU, skip the spread when no pair needs it; on CUDA that test would cost a host sync
    # per layer, more than the few small kernels of the spread itself.
    if not primary.is_cuda and not bool((primary < 0).any()):
        return primary
    token = torch.arange(topk_ids.shape[0], device=topk_ids.device).unsqueeze(1)
    spread = (token + placement.rank) % placement.logcnt[topk_ids]
    return torch.where(primary >= 0, primary, placement.log2phy[topk_ids, spread])
