"""Loading Hugging Face checkpoints: sharded and selective, checked, FP8, and the MTP layer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from moeplane.api.hf_config import read_hf_config
from moeplane.api.presets import model_preset
from moeplane.workers.ep.comm import EPComm
from moeplane.workers.model import EPModelRunner, SafetensorsWeights, prefill_metadata
from moeplane.workers.model.fp8 import dequantize_block_fp8
from moeplane.workers.model.weights import RandomWeights, WeightError, mtp_weight_shapes
from moeplane.workers.placement import Placement
from safetensors.torch import load_file, save_file

from tests.checkpoints import _quantize_block, dequantize_checkpoint, reshard_by_expert
from tests.workers.model.hf_reference import hf_logits

pytestmark = pytest.mark.unit

PROMPT = [5, 77, 300, 12, 9, 250, 31, 31, 140, 2, 66]


def _rank_comm(rank: int, world: int) -> EPComm:
    return EPComm(rank=rank, world_size=world, group=None, device=torch.device("cpu"))


def _index(path: Path) -> dict[str, str]:
    return json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]


def _edit_tensor(path: Path, name: str, value: torch.Tensor | None) -> str:
    """Replace (or, with None, remove) one tensor of a sharded checkpoint; returns its shard."""
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shard = index["weight_map"][name]
    tensors = load_file(str(path / shard))
    if value is None:
        del tensors[name], index["weight_map"][name]
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        tensors[name] = value
    save_file(tensors, str(path / shard))
    return shard


@pytest.fixture
def copy_of(hf_checkpoint, tmp_path: Path):
    def make(kind: str) -> Path:
        return Path(shutil.copytree(hf_checkpoint(kind), tmp_path / kind))

    return make


def test_each_rank_reads_only_its_own_experts_and_their_shards(hf_checkpoint, tmp_path: Path) -> None:
    path = reshard_by_expert(hf_checkpoint("deepseek-v3"), tmp_path / "resharded", experts_per_shard=4)
    arch = read_hf_config(path).arch
    weight_map = _index(path)
    # 10 slots, 5 per rank: rank 0 holds experts 0..4, rank 1 experts 5..7 (5 and 6 twice).
    phy2log = torch.tensor([[*range(8), 5, 6]] * arch.num_moe_layers)
    placement = Placement.from_phy2log(phy2log, 8)
    for rank in (0, 1):
        source = SafetensorsWeights(path)
        EPModelRunner(arch, source, placement, _rank_comm(rank, 2))
        own = set(phy2log[0, rank * 5 : rank * 5 + 5].tolist())
        read = {(int(n.split(".")[2]), int(n.split(".")[5])) for n in source.names_read if ".experts." in n}
        assert read == {(i, e) for i in arch.moe_layer_indices for e in own}
        # Shards are opened only for what was read: rank 1 never opens those of experts 0..3.
        assert source.files_opened == {weight_map[n] for n in source.names_read}
        if rank == 1:
            assert not any("-experts0." in f for f in source.files_opened)


def test_a_missing_tensor_names_it_and_the_index(copy_of) -> None:
    path = copy_of("qwen3-moe")
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    _edit_tensor(path, name, None)
    with pytest.raises(WeightError, match=rf"{name}.*missing.*model\.safetensors\.index\.json"):
        EPModelRunner(read_hf_config(path).arch, SafetensorsWeights(path))


def test_a_misshaped_tensor_names_it_and_its_file(copy_of) -> None:
    path = copy_of("deepseek-v3")
    name = "model.layers.1.self_attn.kv_b_proj.weight"
    shard = _edit_tensor(path, name, torch.zeros(3, 3))
    with pytest.raises(WeightError, match=rf"{name} in .*{shard}: checkpoint shape \(3, 3\), model expects"):
        EPModelRunner(read_hf_config(path).arch, SafetensorsWeights(path))


def test_a_wrong_dtype_names_the_tensor_the_file_and_the_config(copy_of) -> None:
    path = copy_of("deepseek-v3")
    name = "model.layers.2.mlp.experts.3.down_proj.weight"
    shard = _edit_tensor(path, name, load_file(str(path / _index(path)[name]))[name].half())
    expected = rf"{name} in .*{shard}: dtype float16, expected float32 \(config.json torch_dtype float32\)"
    with pytest.raises(WeightError, match=expected):
        EPModelRunner(read_hf_config(path).arch, SafetensorsWeights(path))


def test_a_config_that_is_not_the_served_model_is_refused_naming_fields(hf_checkpoint) -> None:
    path = hf_checkpoint("deepseek-v3")
    with pytest.raises(WeightError, match=r"config\.json: .*vocabSize 260 vs 400.*numLayers 4 vs 3"):
        EPModelRunner(model_preset("tiny"), SafetensorsWeights(path))


def test_block_dequantisation_matches_the_blockwise_definition() -> None:
    w = torch.randn(300, 200) * torch.linspace(0.1, 3.0, 200)  # 3 x 2 blocks, partial edges
    q, scale_inv = _quantize_block(w, 128)
    assert scale_inv.shape == (3, 2) and q.dtype == torch.float8_e4m3fn
    got = dequantize_block_fp8(q, scale_inv)
    for i, j in [(0, 0), (2, 1), (1, 1)]:
        rows, cols = slice(i * 128, (i + 1) * 128), slice(j * 128, (j + 1) * 128)
        assert torch.equal(got[rows, cols], q[rows, cols].float() * scale_inv[i, j])
    # e4m3 keeps 3 mantissa bits: round-to-nearest is within 2^-4 relative, plus the subnormal
    # step (2^-9 of the block scale) for tiny elements.
    step = scale_inv.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200] * 2**-9
    assert ((got - w).abs() <= w.abs() * 2**-4 + step).all()


def test_fp8_checkpoint_dequantises_to_what_transformers_computes(hf_checkpoint, tmp_path: Path) -> None:
    path, fp8 = hf_checkpoint("deepseek-v3"), hf_checkpoint("deepseek-v3-fp8")
    config = read_hf_config(fp8)
    assert config.quantization is not None and config.arch.weight_bytes_per_param == 1.0
    source = SafetensorsWeights(fp8)
    runner = EPModelRunner(config.arch, source)
    assert any(n.endswith("weight_scale_inv") for n in source.names_read)
    got = runner.forward(torch.tensor(PROMPT), prefill_metadata([len(PROMPT)]))[0]
    # Exactly the dequantised model (transformers with the dequantised weights loaded) ...
    want = hf_logits(dequantize_checkpoint(fp8, tmp_path / "dequantised"), PROMPT)[-1]
    assert (got - want).abs().max().item() < 1e-4
    # ... and close to the float original: every weight is within 2^-4 relative (3 mantissa
    # bits), so the logits move by a few percent of their norm, far from a random model's 100%+.
    original = hf_logits(path, PROMPT)[-1]
    assert (got - original).norm() / original.norm() < 0.1


@pytest.mark.gpu
def test_fp8_linear_on_gpu_equals_the_dequantised_matmul() -> None:
    from moeplane.workers.model.fp8 import Fp8Linear, fp8_gemm_available

    if not fp8_gemm_available("cuda"):
        pytest.skip("this GPU or torch build has no block-scaled FP8 GEMM (the loader dequantises)")
    w = torch.randn(512, 384)
    q, scale_inv = _quantize_block(w, 128)
    x = torch.randn(64, 384)
    layer = Fp8Linear(q.cuda(), scale_inv.cuda(), None)
    got = layer(x.cuda().bfloat16()).float().cpu()
    want = x @ dequantize_block_fp8(q, scale_inv).T
    assert (got - want).norm() / want.norm() < 0.05


def test_the_mtp_layer_loads_and_the_main_forward_ignores_it(copy_of, hf_checkpoint) -> None:
    path = copy_of("deepseek-v3")
    config = json.loads((path / "config.json").read_text())
    config["num_nextn_predict_layers"] = 1
    (path / "config.json").write_text(json.dumps(config))
    arch = read_hf_config(path).arch
    mtp = RandomWeights(arch, 7)
    tensors = {n: mtp.get(n) for n in mtp_weight_shapes(arch)}
    save_file(tensors, str(path / "model-mtp.safetensors"))
    index = json.loads((path / "model.safetensors.index.json").read_text())
    index["weight_map"].update(dict.fromkeys(tensors, "model-mtp.safetensors"))
    (path / "model.safetensors.index.json").write_text(json.dumps(index))

    runner = EPModelRunner(arch, SafetensorsWeights(path))
    assert runner.mtp is not None and len(runner.mtp) == 1
    layer = runner.mtp[0]
    assert torch.equal(layer.eh_proj.weight, tensors["model.layers.3.eh_proj.weight"])
    assert torch.equal(layer.shared_head_norm.weight, tensors["model.layers.3.shared_head.norm.weight"])
    got = runner.forward(torch.tensor(PROMPT), prefill_metadata([len(PROMPT)]))[0]
    assert (got - hf_logits(hf_checkpoint("deepseek-v3"), PROMPT)[-1]).abs().max().item() < 1e-4

    meta = prefill_metadata([len(PROMPT)])
    hidden = runner.forward_hidden(torch.tensor(PROMPT), meta)
    draft = runner.forward_mtp(torch.tensor([*PROMPT[1:], 3]), hidden, meta)
    assert draft.shape == (1, arch.vocab_size) and torch.isfinite(draft).all()

    # Under EP, each rank reads only its own experts of the MTP layer too.
    placement = Placement.identity(arch.num_moe_layers, arch.num_routed_experts)
    source = SafetensorsWeights(path)
    EPModelRunner(arch, source, placement, _rank_comm(1, 2))
    prefix = "model.layers.3.mlp.experts."
    mtp_experts = {int(n.split(".")[5]) for n in source.names_read if n.startswith(prefix)}
    assert mtp_experts == set(range(4, 8))
