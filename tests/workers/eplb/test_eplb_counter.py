"""ExpertLoadCounter: device-side counting, the bucketed window, and placement switches."""

from __future__ import annotations

import pytest
import torch
from moeplane.workers.eplb.counter import ExpertLoadCounter
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement

pytestmark = pytest.mark.unit


def placement_2x6() -> Placement:
    # 2 layers, 4 experts, 6 slots: expert 0 has replicas in slots 0 and 4, expert 1 in 1 and 5.
    row = torch.tensor([0, 1, 2, 3, 0, 1])
    return Placement.from_phy2log(torch.stack([row, row.flip(0)]), num_logical=4)


def test_counts_per_slot_and_per_expert() -> None:
    counter = ExpertLoadCounter(rank=3, placement=placement_2x6(), num_buckets=2, bucket_steps=4)
    counter.record(0, torch.tensor([[0, 4], [4, 2]]))
    counter.record(1, torch.tensor([5, 5, 0]))
    counter.end_step()
    window = counter.window()
    assert window.rank == 3 and window.num_steps == 1 and window.slot_steps == 1
    assert window.slot_counts.tolist() == [[1, 0, 1, 0, 2, 0], [1, 0, 0, 0, 0, 2]]
    # layer 1's row is [1, 0, 3, 2, 1, 0]: slot 5 holds expert 0, slot 0 expert 1.
    assert window.logical_counts.tolist() == [[3, 0, 1, 0], [2, 1, 0, 0]]
    assert window.slot_counts.dtype == torch.int64 and window.logical_counts.device.type == "cpu"


def test_the_window_slides_by_whole_buckets() -> None:
    counter = ExpertLoadCounter(rank=0, placement=placement_2x6(), num_buckets=2, bucket_steps=2)
    for step in range(5):
        counter.record(0, torch.full((step + 1,), 2))
        counter.end_step()
    # Steps 2 and 3 fill bucket 1, step 4 opened bucket 0 again: the window holds steps 2..4.
    window = counter.window()
    assert window.num_steps == 3
    assert int(window.slot_counts[0, 2]) == 3 + 4 + 5


def test_a_switch_keeps_logical_history_and_restarts_slot_counts() -> None:
    old = placement_2x6()
    counter = ExpertLoadCounter(rank=0, placement=old, num_buckets=4, bucket_steps=8)
    counter.record(0, torch.tensor([0, 0, 1]))
    counter.end_step()
    new = Placement.from_phy2log(torch.tensor([[3, 2, 1, 0, 3, 2], [0, 1, 2, 3, 0, 1]]), 4, version=1)
    counter.switch_placement(new, layers=[0])
    assert counter.placement_version == -1, "only layer 0 switched: slot counts belong to no placement"
    counter.record(0, torch.tensor([0]))  # slot 0 now holds expert 3
    counter.end_step()
    counter.switch_placement(new, layers=[1])
    assert counter.placement_version == 1
    counter.record(1, torch.tensor([3]))
    counter.end_step()
    window = counter.window()
    assert window.logical_counts[0].tolist() == [2, 1, 0, 1]
    assert window.logical_counts[1].tolist() == [0, 0, 0, 1]
    assert window.slot_steps == 1 and window.slot_counts.sum() == 1


def test_switching_mid_step_or_to_another_shape_is_refused() -> None:
    counter = ExpertLoadCounter(rank=0, placement=placement_2x6())
    with pytest.raises(EplbError, match=r"does not fit this counter's \(2, 6\) over 4"):
        counter.switch_placement(Placement.identity(2, 4, 8))
    counter.record(0, torch.tensor([1]))
    with pytest.raises(EplbError, match="mid-step"):
        counter.switch_placement(placement_2x6())


def test_reset_clears_everything() -> None:
    counter = ExpertLoadCounter(rank=0, placement=placement_2x6())
    counter.record(1, torch.tensor([1, 2]))
    counter.end_step()
    counter.reset()
    window = counter.window()
    assert window.num_steps == 0 and int(window.logical_counts.sum()) == 0


@pytest.mark.gpu
def test_counting_on_cuda_needs_no_host_sync() -> None:
    placement = placement_2x6()
    counter = ExpertLoadCounter(rank=0, placement=placement, device="cuda")
    slots = torch.randint(0, 6, (4096, 8), device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        counter.record(0, slots)
        counter.end_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(counter.window().slot_counts.sum()) == 4096 * 8
