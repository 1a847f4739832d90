"""Physical→logical expert placement: which expert each physical slot holds, per MoE layer.

A group of `num_ranks` EP ranks holds `R = num_ranks * slots_per_rank` physical expert slots per
layer. Slot `r` lives on rank `r // slots_per_rank`. With redundant experts (R > E) hot logical
experts have several replicas. EPLB produces placements (`load -> placement`); the EP engine
consumes them. Placement never changes the model's math, only where an expert's tokens go.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class PlacementError(ValueError):
    """A placement whose maps are inconsistent or do not fit the EP group."""


@dataclass(frozen=True)
class Placement:
    """Maps for every MoE layer. All tensors are int64 on the CPU.

    Attributes:
        phy2log: [L, R] logical expert held by each physical slot.
        log2phy: [L, E, max_replicas] physical slots of each logical expert; entries past
            `logcnt` are padding (-1), as in DeepSeek's EPLB output.
        logcnt: [L, E] replicas of each logical expert (every entry >= 1).
        version: increases with each published rebalance.
    """

    phy2log: torch.Tensor
    log2phy: torch.Tensor
    logcnt: torch.Tensor
    version: int = 0

    @property
    def num_layers(self) -> int:
        return int(self.phy2log.shape[0])

    @property
    def num_physical(self) -> int:
        return int(self.phy2log.shape[1])

    @property
    def num_logical(self) -> int:
        return int(self.logcnt.shape[1])

    def slots_per_rank(self, num_ranks: int) -> int:
        if self.num_physical % num_ranks:
            raise PlacementError(
                f"{self.num_physical} physical expert slots do not divide among {num_ranks} ranks"
            )
        return self.num_physical // num_ranks

    def rank_of_slot(self, num_ranks: int) -> torch.Tensor:
        """[R] int64: the rank holding each physical slot."""
        return torch.arange(self.num_physical) // self.slots_per_rank(num_ranks)

    @classmethod
    def from_phy2log(cls, phy2log: torch.Tensor, num_logical: int, version: int = 0) -> Placement:
        """Derive `log2phy` and `logcnt` from `phy2log` ([L, R] int64); slots keep ascending order."""
        phy2log = phy2log.to(torch.int64).cpu()
        if phy2log.dim() != 2:
            raise PlacementError(f"phy2log must be [layers, slots], got shape {tuple(phy2log.shape)}")
        num_layers, num_physical = phy2log.shape
        if phy2log.numel() and (int(phy2log.min()) < 0 or int(phy2log.max()) >= num_logical):
            raise PlacementError(f"phy2log holds ids outside [0, {num_logical})")
        logcnt = torch.zeros(num_layers, num_logical, dtype=torch.int64)
        logcnt.scatter_add_(1, phy2log, torch.ones_like(phy2log))
        if bool((logcnt == 0).any()):
            layer, expert = (logcnt == 0).nonzero()[0].tolist()
            raise PlacementError(f"layer {layer}: logical expert {expert} has no physical slot")
        max_replicas = int(logcnt.max()) if logcnt.numel() else 1
        log2phy = torch.full((num_layers, num_logical, max_replicas), -1, dtype=torch.int64)
        # Stable sort by logical id groups each expert's slots in ascending slot order.
        order = torch.argsort(phy2log, dim=1, stable=True)
        sorted_log = torch.gather(phy2log, 1, order)
        starts = torch.cumsum(logcnt, dim=1) - logcnt
        replica_idx = torch.arange(num_physical).expand(num_layers, -1) - torch.gather(starts, 1, sorted_log)
        log2phy[
            torch.arange(num_layers).unsqueeze(1).expand(-1, num_physical), sorted_log, replica_idx
        ] = order
        return cls(phy2log=phy2log, log2phy=log2phy, logcnt=logcnt, version=version)

    @classmethod
    def identity(cls, num_layers: int, num_logical: int, num_physical: int | None = None) -> Placement:
        """Slot r holds expert r % E: no rebalancing, extra slots replicate the lowest ids."""
        num_physical = num_logical if num_physical is None else num_physical
        if num_physical < num_logical:
            raise PlacementError(f"{num_physical} slots cannot hold {num_logical} experts")
        row = torch.arange(num_physical, dtype=torch.int64) % num_logical
        return cls.from_phy2log(row.expand(num_layers, -1).clone(), num_logical)

    def with_version(self, version: int) -> Placement:
        return Placement(self.phy2log, self.log2phy, self.logcnt, version)
