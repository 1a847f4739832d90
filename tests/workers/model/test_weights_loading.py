"""Safetensors loading with Hugging Face names; each EP rank reads only its own experts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from moeplane.api.presets import model_preset
from moeplane.workers.ep.comm import EPComm
from moeplane.workers.model import EPModelRunner, RandomWeights, SafetensorsWeights, prefill_metadata
from moeplane.workers.model.weights import (
    StateDictWeights,
    WeightError,
    expert_weight_name,
    save_checkpoint,
    weight_shapes,
)
from moeplane.workers.placement import Placement

pytestmark = pytest.mark.unit

TINY = model_preset("tiny")


def _rank_comm(rank: int, world: int) -> EPComm:
    # Building a runner runs no collective, so a group-less communicator is enough to load.
    return EPComm(rank=rank, world_size=world, group=None, device=torch.device("cpu"))


def _experts_read(names: set[str]) -> set[tuple[int, int]]:
    return {(int(n.split(".")[2]), int(n.split(".")[5])) for n in names if ".mlp.experts." in n}


def test_hf_names_cover_the_deepseek_layout() -> None:
    shapes = weight_shapes(TINY)
    assert shapes["model.layers.1.mlp.experts.15.down_proj.weight"] == (64, 32)
    assert shapes["model.layers.1.mlp.shared_experts.gate_proj.weight"] == (32, 64)
    assert shapes["model.layers.2.mlp.gate.e_score_correction_bias"] == (16,)
    assert shapes["model.layers.0.mlp.gate_proj.weight"] == (128, 64)  # the dense first layer
    assert shapes["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"] == (40, 64)
    assert "model.layers.0.mlp.experts.0.gate_proj.weight" not in shapes
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert total - _norms_and_bias(shapes) == TINY.total_params


def _norms_and_bias(shapes: dict[str, tuple[int, ...]]) -> int:
    # ModelArch.total_params counts matrices only; norms and router biases are vectors on top.
    return sum(s[0] for n, s in shapes.items() if len(s) == 1)


@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "hf-index"])
def test_checkpoint_round_trip_equals_random_init(tmp_path: Path, sharded: bool) -> None:
    path = save_checkpoint(TINY, RandomWeights(TINY, 21), tmp_path / "ckpt.safetensors"
                           if not sharded else tmp_path / "ckpt", shard_per_layer=sharded)
    ids = torch.randint(0, 256, (9,), generator=torch.Generator().manual_seed(0))
    meta = prefill_metadata([9])
    from_file = EPModelRunner(TINY, SafetensorsWeights(path)).forward_hidden(ids, meta)
    from_seed = EPModelRunner(TINY, weights=21).forward_hidden(ids, meta)
    assert torch.equal(from_file, from_seed)


def test_each_rank_reads_only_its_own_experts(tmp_path: Path) -> None:
    # 16 experts, 2 ranks, 4 redundant slots: rank 1 holds slots 10..19.
    phy2log = torch.tensor([[*range(16), 0, 5, 9, 14]] * TINY.num_moe_layers)
    placement = Placement.from_phy2log(phy2log, 16)
    path = save_checkpoint(TINY, RandomWeights(TINY, 2), tmp_path / "ckpt", shard_per_layer=True)
    for rank in (0, 1):
        source = SafetensorsWeights(path)
        runner = EPModelRunner(TINY, source, placement, _rank_comm(rank, 2))
        own = set(phy2log[0, rank * 10 : rank * 10 + 10].tolist())
        layers = range(TINY.first_k_dense_layers, TINY.num_layers)
        assert _experts_read(source.names_read) == {(i, e) for i in layers for e in own}
        w13 = runner.model.model.layers[2].mlp.experts.w13
        expected = torch.cat([source.get(expert_weight_name(2, int(phy2log[0, rank * 10 + 3]), p))
                              for p in ("gate_proj", "up_proj")])
        assert torch.equal(w13[3], expected)


def test_a_rank_loads_from_a_checkpoint_holding_only_its_experts(tmp_path: Path) -> None:
    placement = Placement.identity(TINY.num_moe_layers, 16)
    rank1 = set(range(8, 16))
    names = [n for n in weight_shapes(TINY) if ".experts." not in n or int(n.split(".")[5]) in rank1]
    path = save_checkpoint(TINY, RandomWeights(TINY, 4), tmp_path / "rank1.safetensors", names=names)
    EPModelRunner(TINY, SafetensorsWeights(path), placement, _rank_comm(1, 2))
    with pytest.raises(WeightError, match=r"model\.layers\.1\.mlp\.experts\.0\.gate_proj\.weight"):
        EPModelRunner(TINY, SafetensorsWeights(path), placement, _rank_comm(0, 2))


def test_wrong_shapes_name_the_tensor() -> None:
    tensors = {n: torch.zeros(s) for n, s in weight_shapes(TINY).items()}
    tensors["model.layers.0.self_attn.kv_b_proj.weight"] = torch.zeros(3, 3)
    expected = r"kv_b_proj\.weight: checkpoint shape \(3, 3\), model expects \(128, 32\)"
    with pytest.raises(WeightError, match=expected):
        EPModelRunner(TINY, StateDictWeights(tensors))


def test_random_weights_depend_only_on_seed_and_name() -> None:
    name = expert_weight_name(3, 7, "up_proj")
    a, b, c = RandomWeights(TINY, 1), RandomWeights(TINY, 1), RandomWeights(TINY, 2)
    assert torch.equal(a.get(name), b.get(name))
    assert not torch.equal(a.get(name), c.get(name))
    with pytest.raises(WeightError, match="not a tensor of tiny"):
        a.get("model.layers.9.mlp.gate.weight")
