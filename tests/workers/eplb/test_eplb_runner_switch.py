"""The engine side of online EPLB on one rank: counting routed tokens every forward pass, moving
expert weights a layer per step between forward passes, and routing skew as a weight source."""

from __future__ import annotations

import pytest
import torch
from moeplane.api.presets import model_preset
from moeplane.workers.eplb.counter import ExpertLoadCounter
from moeplane.workers.eplb.rebalance import rebalance
from moeplane.workers.model import EPModelRunner, RandomWeights, prefill_metadata
from moeplane.workers.model.skew import RoutingSkew, SkewedWeights
from moeplane.workers.model.weights import WeightError
from moeplane.workers.placement import Placement

pytestmark = pytest.mark.unit

ARCH = model_preset("tiny")
SKEW = RoutingSkew(hot_experts=(4, 5, 6), bias=1.0)
WEIGHTS = SkewedWeights(RandomWeights(ARCH, 3), ARCH, SKEW)
SLOTS = ARCH.num_routed_experts + 4


def forward(runner: EPModelRunner, ids: torch.Tensor) -> torch.Tensor:
    return runner.forward(ids, prefill_metadata([ids.numel()], runner.device)).cpu()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_counting_then_a_layer_by_layer_switch_keeps_the_logits(device: str) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, ARCH.vocab_size, (48,))
    start = Placement.identity(ARCH.num_moe_layers, ARCH.num_routed_experts, SLOTS)
    runner = EPModelRunner(ARCH, WEIGHTS, start, device=device)
    runner.enable_load_counting(num_buckets=4)
    before = forward(runner, ids)

    window = runner.load_window()
    assert window is not None and window.num_steps == 1
    pairs = ids.numel() * ARCH.num_experts_per_tok
    assert window.logical_counts.sum(1).tolist() == [pairs] * ARCH.num_moe_layers
    hot = window.logical_counts[:, list(SKEW.hot_experts)].sum(1)
    assert bool((hot >= ids.numel() * 3 * 0.9).all()), "the skew sends nearly every token to 4-6"

    target = rebalance(window.logical_counts, SLOTS, ARCH.n_group, 1, 2, previous=start)
    assert target.version == 1 and not torch.equal(target.phy2log, start.phy2log)
    runner.begin_placement(target, layers_per_step=1)
    batches = 0
    while runner.is_moving:
        done = runner.advance_placement()
        batches += 1
        assert runner.placement_version == (1 if done else 0)
        torch.testing.assert_close(forward(runner, ids), before, rtol=1e-5, atol=1e-5)
    assert batches == int((start.phy2log != target.phy2log).any(1).sum())
    assert torch.equal(runner.placement.phy2log, target.phy2log)

    # Every slot holds exactly the weights a fresh load of the target placement gives.
    fresh = EPModelRunner(ARCH, WEIGHTS, target, device=device)
    for moved, loaded in zip(runner.model.parameters(), fresh.model.parameters(), strict=True):
        assert torch.equal(moved, loaded)
    # And the counter now counts under v1.
    forward(runner, ids)
    assert runner.load_window().placement_version == 1  # type: ignore[union-attr]


def test_time_buckets_forget_an_idle_spell() -> None:
    placement = Placement.identity(2, 4, 4)
    counter = ExpertLoadCounter(0, placement, num_buckets=4, bucket_s=1.0)
    t0 = counter._opened_s
    counter.record(0, torch.tensor([0, 1, 1]))
    counter.end_step(now_s=t0 + 0.1)
    counter.record(1, torch.tensor([3]))
    counter.end_step(now_s=t0 + 1.5)  # a new bucket
    window = counter.window(now_s=t0 + 1.6)
    assert window.num_steps == 2 and window.logical_counts.tolist() == [[1, 2, 0, 0], [0, 0, 0, 1]]
    assert counter.window(now_s=t0 + 4.2).logical_counts.tolist() == [[0, 0, 0, 0], [0, 0, 0, 1]]
    assert counter.window(now_s=t0 + 9.0).num_steps == 0


def test_routing_skew_checks_its_experts_and_the_router() -> None:
    with pytest.raises(WeightError, match=r"hot_experts \[16\] outside the 16 routed experts"):
        SkewedWeights(RandomWeights(ARCH, 0), ARCH, RoutingSkew((3, 16)))
    qwen = model_preset("qwen3-235b-a22b")
    with pytest.raises(WeightError, match="needs a router with a correction bias"):
        SkewedWeights(RandomWeights(qwen, 0), qwen, RoutingSkew((1,)))
    name = "model.layers.1.mlp.gate.e_score_correction_bias"
    delta = WEIGHTS.get(name) - RandomWeights(ARCH, 3).get(name)
    assert delta.nonzero().flatten().tolist() == [4, 5, 6] and float(delta.max()) == 1.0
