"""plan_moves: applying the plan to a table of slot contents yields the new placement."""

from __future__ import annotations

import pytest
import torch
from moeplane.api.enums import EplbAlgorithm
from moeplane.workers.eplb.metrics import moved_slots
from moeplane.workers.eplb.moves import apply_plan_to_maps, plan_moves
from moeplane.workers.eplb.rebalance import rebalance
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement

from .loads import drifted, zipf_load

pytestmark = pytest.mark.unit


def simulate(old: Placement, new: Placement, num_ranks: int, layers_per_step: int) -> torch.Tensor:
    """Run the plan on a table whose cells hold expert ids, staging from the live old values."""
    live = old.phy2log.clone()
    maps = old.phy2log.clone()
    plan = plan_moves(old, new, num_ranks, layers_per_step)
    for step in plan.steps:
        assert 1 <= len(step.layers) <= layers_per_step
        staged = {}
        for move in step.moves:
            assert move.layer in step.layers
            assert int(live[move.layer, move.src_slot]) == move.expert, "sources are read from old weights"
            staged[(move.layer, move.dst_slot)] = int(live[move.layer, move.src_slot])
        for (layer, slot), expert in staged.items():
            live[layer, slot] = expert
        maps = apply_plan_to_maps(maps, new, step)
        for layer in step.layers:
            assert torch.equal(live[layer], maps[layer]), "weights and map switch together"
    return live


@pytest.mark.parametrize("layers_per_step", [1, 3])
def test_the_plan_turns_old_weights_into_the_new_placement(layers_per_step: int) -> None:
    load = zipf_load(7, 64, 1.0, seed=0)
    old = rebalance(load, 80, 8, 2, 8)
    new = rebalance(drifted(load, 0.5, seed=1), 80, 8, 2, 8, EplbAlgorithm.GLOBAL)
    live = simulate(old, new, 8, layers_per_step)
    assert torch.equal(live, new.phy2log)
    plan = plan_moves(old, new, 8, layers_per_step)
    assert plan.from_version == old.version and plan.to_version == new.version
    # Remote copies are exactly the weights the metric counts as crossing GPUs.
    assert plan.num_remote == int(moved_slots(old, new, 8).sum())


def test_local_copies_are_preferred_and_senders_are_spread() -> None:
    old = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3, 0, 0, 0, 0]]), 4)
    new = Placement.from_phy2log(torch.tensor([[1, 0, 2, 3, 1, 0, 0, 0]]), 4, version=1)
    plan = plan_moves(old, new, num_ranks=4)
    moves = {m.dst_slot: m for m in plan.steps[0].moves}
    assert moves[0].is_local and moves[0].src_slot == 1  # rank 0 already held expert 1 in slot 1
    assert moves[1].is_local and moves[1].src_slot == 0
    assert not moves[4].is_local and moves[4].src_rank == 0
    assert plan.steps[0].sends(0) == (moves[4],) and plan.steps[0].receives(2) == (moves[4],)
    assert plan.bytes_moved(1000.0) == 1000


def test_identical_placements_need_no_step_and_bad_inputs_are_refused() -> None:
    same = Placement.identity(3, 8, 16)
    assert plan_moves(same, same.with_version(1), 4).steps == ()
    with pytest.raises(EplbError, match="cannot move from a"):
        plan_moves(same, Placement.identity(3, 8, 8), 4)
    with pytest.raises(EplbError, match="layers_per_step must be >= 1, got 0"):
        plan_moves(same, same, 4, layers_per_step=0)
