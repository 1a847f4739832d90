"""The balancer's vocabulary: the validated EP layout and the domain error (the placement
algorithms are `moeplane.api.enums.EplbAlgorithm`, the names `spec.eplb.algorithm` spells)."""

from __future__ import annotations

from dataclasses import dataclass


class EplbError(ValueError):
    """Bad balancer input: a load, a layout or a previous placement that does not fit."""


@dataclass(frozen=True)
class EplbLayout:
    """The shape of one EP group's expert slots, checked once.

    Attributes:
        num_layers / num_logical: L and E of the load matrix.
        num_physical: R expert slots per layer over the whole group (E + redundant experts).
        num_groups: expert groups of group-limited routing (DeepSeek-V3: 8).
        num_nodes / num_gpus: nodes and GPUs (EP ranks) in the group.
    """

    num_layers: int
    num_logical: int
    num_physical: int
    num_groups: int
    num_nodes: int
    num_gpus: int

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_logical", "num_physical", "num_groups", "num_nodes", "num_gpus"):
            if getattr(self, name) < 1:
                raise EplbError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_physical < self.num_logical:
            raise EplbError(
                f"num_physical ({self.num_physical}) must be >= the {self.num_logical} logical experts"
            )
        if self.num_physical % self.num_gpus:
            raise EplbError(
                f"num_physical ({self.num_physical}) must be a multiple of num_gpus ({self.num_gpus})"
            )
        if self.num_gpus % self.num_nodes:
            raise EplbError(f"num_gpus ({self.num_gpus}) must be a multiple of num_nodes ({self.num_nodes})")
        if self.num_logical % self.num_groups:
            raise EplbError(
                f"num_logical ({self.num_logical}) must be a multiple of num_groups ({self.num_groups})"
            )

    @property
    def slots_per_gpu(self) -> int:
        return self.num_physical // self.num_gpus

    @property
    def hierarchical_fits(self) -> bool:
        """Groups can be pinned to nodes: DeepSeek's condition for its hierarchical policy.

        With a single node there is nothing to keep local, so the global path is used.
        """
        return self.num_nodes > 1 and self.num_groups % self.num_nodes == 0
