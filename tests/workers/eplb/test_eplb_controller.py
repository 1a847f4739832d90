"""The online balancer's pure decision."""

from __future__ import annotations

import pytest
import torch
from moeplane.workers.eplb.controller import (
    ControllerConfig,
    Keep,
    KeepReason,
    Rebalance,
    decide,
    measured_balancedness,
)
from moeplane.workers.eplb.metrics import placement_balancedness
from moeplane.workers.eplb.rebalance import rebalance
from moeplane.workers.eplb.store import ExpertLoadWindow
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement

from .loads import zipf_load

pytestmark = pytest.mark.unit

CONFIG = ControllerConfig(threshold=0.9, num_groups=4, num_nodes=1, num_gpus=4, min_steps=4)


def group_load(
    logical: torch.Tensor, steps: int = 10, version: int = 0, slots: torch.Tensor | None = None
) -> ExpertLoadWindow:
    num_layers = logical.shape[0]
    return ExpertLoadWindow(
        num_windows=2,
        num_steps=steps,
        logical_counts=logical.to(torch.int64),
        placement_version=version,
        slot_counts=torch.zeros(num_layers, 20, dtype=torch.int64) if slots is None else slots,
        slot_windows=0 if slots is None else 2,
    )


def test_no_or_thin_data_keeps_the_placement() -> None:
    current = Placement.identity(2, 16, 20)
    assert decide(None, current, CONFIG) == Keep(KeepReason.NO_DATA, None)
    thin = group_load(zipf_load(2, 16, 1.4, seed=0), steps=3)
    assert decide(thin, current, CONFIG).reason is KeepReason.NO_DATA  # type: ignore[union-attr]


def test_a_balanced_pool_is_left_alone() -> None:
    load = torch.full((2, 16), 100.0)
    decision = decide(group_load(load), rebalance(load, 20, 4, 1, 4), CONFIG)
    assert isinstance(decision, Keep) and decision.reason is KeepReason.BALANCED
    assert decision.measured is not None and decision.measured >= 0.9


def test_a_skewed_pool_gets_a_newer_more_balanced_placement() -> None:
    load = zipf_load(3, 16, 1.0, seed=1)
    current = Placement.identity(3, 16, 20).with_version(4)
    decision = decide(group_load(load), current, CONFIG)
    assert isinstance(decision, Rebalance)
    assert decision.placement.version == 5
    assert decision.expected_after >= decision.expected_before + CONFIG.min_gain
    assert decision.expected_after == pytest.approx(
        float(placement_balancedness(load, decision.placement, 4).mean())
    )
    assert decision.moved_slots > 0


def test_no_gain_means_no_move() -> None:
    load = zipf_load(3, 16, 1.0, seed=1)
    best = rebalance(load, 20, 4, 1, 4)
    strict = ControllerConfig(threshold=1.0, num_groups=4, num_nodes=1, num_gpus=4, min_steps=4)
    decision = decide(group_load(load), best, strict)
    assert isinstance(decision, Keep) and decision.reason is KeepReason.NO_GAIN


def test_measured_slot_counts_win_over_the_even_split_estimate() -> None:
    load = torch.full((1, 16), 10.0)
    current = Placement.identity(1, 16, 20)
    # Ranks measured all of their tokens on GPU 0's slots ("local first" routing gone wrong).
    slots = torch.zeros(1, 20, dtype=torch.int64)
    slots[0, :5] = 32
    measured = measured_balancedness(group_load(load, slots=slots), current, 4)
    assert measured == pytest.approx(0.25)
    estimate = measured_balancedness(group_load(load), current, 4)
    assert estimate > 0.25


def test_config_and_shape_errors_are_clear() -> None:
    with pytest.raises(EplbError, match=r"threshold must lie in \(0, 1\], got 1.5"):
        ControllerConfig(threshold=1.5, num_groups=1, num_nodes=1, num_gpus=1)
    with pytest.raises(EplbError, match=r"load window is \(2, 8\) but the placement covers 2 layers x 16"):
        decide(group_load(torch.ones(2, 8)), Placement.identity(2, 16, 20), CONFIG)
