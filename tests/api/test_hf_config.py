"""config.json -> ModelArch: the published configs map to the presets; what is not implemented is
refused by name; preset and checkpoint differences are reported field by field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from moeplane.api.hf_config import HFConfigError, arch_differences, describe_differences, parse_hf_config
from moeplane.api.presets import model_preset
from moeplane.api.spec import parse_deployment
from moeplane.api.validation import validate_spec

pytestmark = pytest.mark.unit

# The published config.json files (deepseek-ai/DeepSeek-V3, moonshotai/Kimi-K2-Instruct,
# Qwen/Qwen3-235B-A22B), auto_map left out.
DEEPSEEK_V3: dict[str, Any] = {
    "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
    "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
    "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "pretraining_tp": 1,
    "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128, "vocab_size": 129280,
}
KIMI_K2 = {
    **DEEPSEEK_V3, "bos_token_id": 163584, "eos_token_id": 163585, "first_k_dense_replace": 1,
    "max_position_embeddings": 131072, "model_type": "kimi_k2", "n_group": 1, "n_routed_experts": 384,
    "num_attention_heads": 64, "num_key_value_heads": 64, "num_nextn_predict_layers": 0,
    "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 50000.0, "routed_scaling_factor": 2.827, "topk_group": 1, "vocab_size": 163840,
}
QWEN3_235B = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 12288,
    "max_position_embeddings": 40960, "max_window_layers": 94, "mlp_only_layers": [],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 1536, "norm_topk_prob": True, "num_attention_heads": 64, "num_experts": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 94, "num_key_value_heads": 4,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}


@pytest.mark.parametrize(("raw", "preset"), [
    (DEEPSEEK_V3, "deepseek-v3"), (DEEPSEEK_V3, "deepseek-r1"), (KIMI_K2, "kimi-k2"),
    (QWEN3_235B, "qwen3-235b-a22b"),
])
def test_published_configs_map_to_their_presets(raw: dict, preset: str) -> None:
    parsed = parse_hf_config(raw)
    assert arch_differences(model_preset(preset), parsed.arch) == []
    assert (parsed.quantization is not None) == ("quantization_config" in raw)


def _changed(raw: dict, **changes: Any) -> dict:
    out = copy.deepcopy(raw)
    out.update(changes)
    return out


@pytest.mark.parametrize(("raw", "message"), [
    (_changed(DEEPSEEK_V3, architectures=["LlamaForCausalLM"]),
     "architecture 'LlamaForCausalLM' is not supported (supported: DeepseekV3ForCausalLM, "
     "Qwen3MoeForCausalLM)"),
    (_changed(QWEN3_235B, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
     "rope_scaling.type 'dynamic' is not supported (only yarn, or none)"),
    (_changed(DEEPSEEK_V3, quantization_config={"quant_method": "awq", "bits": 4}),
     "quantization_config.quant_method 'awq' is not supported"),
    (_changed(DEEPSEEK_V3, quantization_config={"quant_method": "fp8", "weight_block_size": [64, 64]}),
     "quantization_config.weight_block_size [64, 64] is not supported (only [128, 128])"),
    (_changed(QWEN3_235B, use_sliding_window=True), "use_sliding_window true is not supported"),
    (_changed(DEEPSEEK_V3, topk_method="greedy"), "topk_method 'greedy' is not supported"),
    (_changed(DEEPSEEK_V3, moe_layer_freq=2), "moe_layer_freq 2 is not supported"),
    (_changed(DEEPSEEK_V3, hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
    (_changed(DEEPSEEK_V3, some_new_feature=True), "field(s) some_new_feature are not implemented"),
    (_changed(QWEN3_235B, num_experts_per_tok=200), "numExpertsPerTok (200) exceeds numRoutedExperts (128)"),
])
def test_unsupported_configs_are_refused_by_name(raw: dict, message: str) -> None:
    with pytest.raises(HFConfigError, match="config.json: .*" + _escape(message)):
        parse_hf_config(raw)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_transformers_5_rope_parameters_and_null_q_lora_map() -> None:
    raw = _changed(DEEPSEEK_V3, q_lora_rank=None, rope_scaling=None, rope_theta=None,
                   rope_parameters={**DEEPSEEK_V3["rope_scaling"], "rope_type": "yarn",
                                    "rope_theta": 10000.0})
    arch = parse_hf_config(raw).arch
    assert arch.q_lora_rank == 0 and arch.rope_scaling is not None and arch.rope_scaling.factor == 40.0


def _manifest(tmp_path: Path, model: dict) -> dict:
    text = (Path(__file__).parents[2] / "examples" / "tiny-cpu.yaml").read_text()
    doc = yaml.safe_load(text)
    doc["spec"]["model"] = model
    return doc


def test_a_manifest_naming_only_a_directory_takes_its_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_235B))
    spec = parse_deployment(_manifest(tmp_path, {"weights": {"uri": str(tmp_path)}}), validate=False).spec
    assert arch_differences(model_preset("qwen3-235b-a22b"), spec.model.resolve_arch()) == []


def test_preset_and_checkpoint_differences_are_reported_field_by_field(tmp_path: Path) -> None:
    raw = _changed(DEEPSEEK_V3, num_hidden_layers=4, vocab_size=300)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    doc = _manifest(tmp_path, {"preset": "deepseek-v3", "weights": {"uri": str(tmp_path)}})
    problems = [str(p) for p in validate_spec(parse_deployment(doc, validate=False).spec)]
    assert any(
        p.startswith(f"spec.model: preset deepseek-v3 differs from {tmp_path}/config.json: ")
        and "vocabSize 129280 vs 300" in p and "numLayers 61 vs 4" in p for p in problems
    ), problems


def test_an_unsupported_checkpoint_is_a_validation_problem(tmp_path: Path) -> None:
    raw = _changed(QWEN3_235B, architectures=["MixtralForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(raw))
    doc = _manifest(tmp_path, {"weights": {"uri": str(tmp_path)}})
    problems = [str(p) for p in validate_spec(parse_deployment(doc, validate=False).spec)]
    assert any(p.startswith("spec.model.weights.uri: ") and "'MixtralForCausalLM' is not supported" in p
               for p in problems), problems


def test_describe_differences_reads_like_the_validator() -> None:
    diffs = arch_differences(model_preset("deepseek-v3"), model_preset("kimi-k2"))
    text = describe_differences(diffs)
    assert "vocabSize 129280 vs 163840" in text and "numRoutedExperts 256 vs 384" in text
