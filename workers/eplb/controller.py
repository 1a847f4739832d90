"""The online balancer's decision: measured load + current placement -> keep it, or a new one.

Pure: the caller reads the load from Redis (`EplbStore.read_load`), calls `decide`, and on a
`Rebalance` publishes the placement and lets the ranks move weights (`plan_moves`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch
from moeplane.api.enums import EplbAlgorithm
from moeplane.workers.eplb.metrics import balancedness, gpu_load, moved_slots, slot_load_per_gpu
from moeplane.workers.eplb.rebalance import rebalance
from moeplane.workers.eplb.store import ExpertLoadWindow
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement


@dataclass(frozen=True)
class ControllerConfig:
    """How one pool is balanced.

    Attributes:
        threshold: rebalance when measured balancedness (mean over layers) falls below this
            (`spec.eplb.balancednessThreshold`).
        num_groups / num_nodes / num_gpus: the pool's EP group layout (see `rebalance`).
        algorithm: the placement algorithm (`spec.eplb.algorithm`).
        min_steps: windows covering fewer forward steps are too noisy to act on.
        min_gain: a new placement must be predicted at least this much more balanced than the
            current one on the same load, or the weights are not worth moving.
    """

    threshold: float
    num_groups: int
    num_nodes: int
    num_gpus: int
    algorithm: EplbAlgorithm = EplbAlgorithm.AUTO
    min_steps: int = 8
    min_gain: float = 0.02

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise EplbError(f"threshold must lie in (0, 1], got {self.threshold}")
        if self.min_steps < 1:
            raise EplbError(f"min_steps must be >= 1, got {self.min_steps}")
        if not 0 <= self.min_gain < 1:
            raise EplbError(f"min_gain must lie in [0, 1), got {self.min_gain}")


class KeepReason(StrEnum):
    NO_DATA = "no-data"  # no window, or too few steps in it
    BALANCED = "balanced"  # measured balancedness is at or above the threshold
    NO_GAIN = "no-gain"  # a new placement would not be enough better to pay for the moves


@dataclass(frozen=True)
class Keep:
    reason: KeepReason
    measured: float | None


@dataclass(frozen=True)
class Rebalance:
    """Publish `placement` (version current + 1).

    Attributes:
        measured: balancedness the ranks measured under the current placement.
        expected_before / expected_after: balancedness of the window's load under the current and
            the new placement, tokens split evenly across replicas.
        moved_slots: expert weights that will cross GPUs.
    """

    placement: Placement
    measured: float
    expected_before: float
    expected_after: float
    moved_slots: int


def measured_balancedness(load: ExpertLoadWindow, current: Placement, num_gpus: int) -> float:
    """Mean over layers of measured balancedness: actual slot counts when the windows counted under
    `current`, else the logical counts split evenly over `current`'s replicas."""
    if load.slot_windows and load.placement_version == current.version:
        per_gpu = slot_load_per_gpu(load.slot_counts, num_gpus)
    else:
        per_gpu = gpu_load(load.logical_counts, current, num_gpus)
    return float(balancedness(per_gpu).mean())


def decide(load: ExpertLoadWindow | None, current: Placement, config: ControllerConfig) -> Keep | Rebalance:
    """Keep the current placement, or rebalance it. Pure."""
    if load is None or load.num_steps < config.min_steps or int(load.logical_counts.sum()) == 0:
        return Keep(KeepReason.NO_DATA, None)
    if tuple(load.logical_counts.shape) != (current.num_layers, current.num_logical):
        raise EplbError(
            f"load window is {tuple(load.logical_counts.shape)} but the placement covers "
            f"{current.num_layers} layers x {current.num_logical} experts"
        )
    measured = measured_balancedness(load, current, config.num_gpus)
    if measured >= config.threshold:
        return Keep(KeepReason.BALANCED, measured)
    counts = load.logical_counts.to(torch.float64)
    new = rebalance(
        counts,
        current.num_physical,
        config.num_groups,
        config.num_nodes,
        config.num_gpus,
        config.algorithm,
        previous=current,
    )
    before = float(balancedness(gpu_load(counts, current, config.num_gpus)).mean())
    after = float(balancedness(gpu_load(counts, new, config.num_gpus)).mean())
    if after < before + config.min_gain:
        return Keep(KeepReason.NO_GAIN, measured)
    return Rebalance(
        placement=new,
        measured=measured,
        expected_before=before,
        expected_after=after,
        moved_slots=int(moved_slots(current, new, config.num_gpus).sum()),
    )
