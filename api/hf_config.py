"""A Hugging Face `config.json` -> `ModelArch` (pure: no torch, no I/O but `read_hf_config`).

Two architectures are served: `DeepseekV3ForCausalLM` (DeepSeek-V3/R1, Kimi K2) and
`Qwen3MoeForCausalLM`. Every field those configs use is mapped; a field that changes the model's
math and that moeplane does not implement is refused by name (an unknown `architectures` value,
a `rope_scaling` type other than yarn, a quantization other than FP8 with 128x128 blocks, sliding
windows, ...). Fields that do not change inference (training losses, generation defaults,
bookkeeping) are listed in `_NO_INFERENCE_EFFECT` and accepted; anything else is refused too, so
nothing is ignored silently. Both the legacy form (`rope_scaling` + `rope_theta`) and
transformers 5's `rope_parameters` are read.

`arch_differences(expected, actual)` compares a preset (or a manifest's architecture) with a
checkpoint's config field by field; validation reports them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from moeplane.api.arch import AttentionKind, ModelArch, RopeScaling, RouterScoring
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

CONFIG_FILE = "config.json"
FP8_BLOCK = (128, 128)


class HFArchitecture(StrEnum):
    DEEPSEEK_V3 = "DeepseekV3ForCausalLM"
    QWEN3_MOE = "Qwen3MoeForCausalLM"


class HFConfigError(ValueError):
    """A config.json moeplane cannot serve; the message names the file and the field."""


@dataclass(frozen=True)
class Fp8BlockQuantization:
    """DeepSeek's FP8 release format: float8_e4m3fn weights with a float32 `weight_scale_inv`
    per `block` (rows, cols) tile, activations quantised dynamically."""

    block: tuple[int, int] = FP8_BLOCK


@dataclass(frozen=True)
class HFModelConfig:
    """What a checkpoint's config.json says: the architecture and how the weights are stored."""

    architecture: HFArchitecture
    model_type: str
    arch: ModelArch
    dtype: str | None  # "bfloat16", "float32", ... as written (torch_dtype / dtype); None if absent
    quantization: Fp8BlockQuantization | None


@dataclass(frozen=True)
class FieldDifference:
    field: str  # camelCase, as in a manifest
    expected: Any
    actual: Any

    def __str__(self) -> str:
        return f"{self.field} {_show(self.expected)} vs {_show(self.actual)}"


# Keys that do not change what inference computes (training, generation defaults, bookkeeping).
_NO_INFERENCE_EFFECT = frozenset({
    "_name_or_path", "transformers_version", "architectures", "model_type", "auto_map", "torch_dtype",
    "dtype", "use_cache", "initializer_range", "attention_dropout", "output_router_logits",
    "router_aux_loss_coef", "aux_loss_alpha", "seq_aux", "pretraining_tp", "ep_size", "pad_token_id",
    "tokenizer_class", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "pruned_heads", "tie_encoder_decoder", "is_decoder",
    "is_encoder_decoder", "cross_attention_hidden_size", "add_cross_attention", "chunk_size_feed_forward",
    "finetuning_task", "id2label", "label2id", "problem_type", "prefix", "task_specific_params",
    "num_return_sequences", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "decoder_start_token_id", "sep_token_id",
    "max_window_layers",  # Qwen: only read with use_sliding_window (refused below)
    "sliding_window",  # likewise
})
_COMMON = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "num_experts_per_tok", "norm_topk_prob",
    "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "rope_parameters", "partial_rotary_factor", "tie_word_embeddings", "attention_bias",
    "bos_token_id", "eos_token_id", "quantization_config",
})
_DEEPSEEK = _COMMON | {
    "n_shared_experts", "n_routed_experts", "routed_scaling_factor", "kv_lora_rank", "q_lora_rank",
    "qk_rope_head_dim", "v_head_dim", "qk_nope_head_dim", "n_group", "topk_group",
    "first_k_dense_replace", "moe_layer_freq", "scoring_func", "topk_method", "rope_interleave",
    "num_nextn_predict_layers", "num_mtp_layers", "head_dim", "qk_head_dim", "qk_layernorm",
}
_QWEN = _COMMON | {
    "num_experts", "num_local_experts", "decoder_sparse_step", "mlp_only_layers", "head_dim",
    "use_sliding_window", "layer_types",
}
_ROPE_KEYS = frozenset({
    "type", "rope_type", "rope_theta", "factor", "original_max_position_embeddings", "beta_fast",
    "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate", "partial_rotary_factor",
})
_WEIGHT_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
# Serving figures a config.json does not fix (the KV cache dtype is the engine's choice).
_NOT_COMPARED = frozenset({"name", "kv_bytes_per_element"})


class _Reader:
    """Typed access to one config dict; every error names `source` and the field."""

    def __init__(self, raw: Mapping[str, Any], source: str) -> None:
        self.raw, self.source = raw, source

    def fail(self, message: str) -> HFConfigError:
        return HFConfigError(f"{self.source}: {message}")

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        return default if value is None else value

    def int(self, key: str, default: int | None = None) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{key} must be an integer (got {value!r})")
        return value

    def num(self, key: str, default: float | None = None) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{key} must be a number (got {value!r})")
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{key} must be true or false (got {value!r})")
        return value

    def require(self, key: str, allowed: tuple[Any, ...], default: Any) -> None:
        value = self.get(key, default)
        if value not in allowed:
            shown = " or ".join(repr(a) for a in allowed)
            raise self.fail(f"{key} {value!r} is not supported (moeplane implements {shown})")


def read_hf_config(directory: str | Path) -> HFModelConfig:
    """Parse `directory/config.json`; HFConfigError names the file when it is missing or bad."""
    path = Path(directory) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise HFConfigError(f"{path}: no config.json in the checkpoint directory") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise HFConfigError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise HFConfigError(f"{path}: must be a JSON object")
    return parse_hf_config(raw, source=str(path), name=Path(directory).name or None)


def parse_hf_config(
    raw: Mapping[str, Any], source: str = CONFIG_FILE, name: str | None = None
) -> HFModelConfig:
    """The architecture and storage format a config dict describes (refusing what is unsupported)."""
    r = _Reader(raw, source)
    archs = raw.get("architectures")
    if not isinstance(archs, list) or len(archs) != 1:
        raise r.fail(f"architectures must list exactly one architecture (got {archs!r})")
    try:
        architecture = HFArchitecture(archs[0])
    except ValueError:
        known = ", ".join(a.value for a in HFArchitecture)
        raise r.fail(f"architecture {archs[0]!r} is not supported (supported: {known})") from None
    allowed = _DEEPSEEK if architecture is HFArchitecture.DEEPSEEK_V3 else _QWEN
    unknown = sorted(k for k in raw if k not in allowed and k not in _NO_INFERENCE_EFFECT)
    if unknown:
        raise r.fail(f"field(s) {', '.join(unknown)} are not implemented for {architecture.value}")
    r.require("hidden_act", ("silu",), "silu")
    model_type = str(raw.get("model_type") or architecture.value)
    quant = _quantization(r)
    dtype = raw.get("torch_dtype") or raw.get("dtype")
    if dtype is not None and dtype not in _WEIGHT_BYTES:
        raise r.fail(f"torch_dtype {dtype!r} is not supported (float32, bfloat16 or float16)")
    common: dict[str, Any] = {
        "name": name or model_type.replace("_", "-"),
        "vocab_size": r.int("vocab_size"),
        "hidden_size": r.int("hidden_size"),
        "num_layers": r.int("num_hidden_layers"),
        "moe_intermediate_size": r.int("moe_intermediate_size"),
        "num_experts_per_tok": r.int("num_experts_per_tok"),
        "num_attention_heads": r.int("num_attention_heads"),
        "rms_norm_eps": r.num("rms_norm_eps", 1e-6),
        "max_position_embeddings": r.int("max_position_embeddings"),
        "tie_word_embeddings": r.bool("tie_word_embeddings", False),
        "attention_bias": r.bool("attention_bias", False),
        "bos_token_id": _optional_int(r, "bos_token_id"),
        "eos_token_ids": _eos_ids(r),
        "weight_bytes_per_param": 1.0 if quant else _WEIGHT_BYTES.get(str(dtype), 2.0),
    }
    common.update(_rope(r))
    specific = _deepseek(r) if architecture is HFArchitecture.DEEPSEEK_V3 else _qwen3_moe(r)
    try:
        arch = ModelArch(**common, **specific)
    except ValidationError as exc:
        details = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise r.fail(f"does not describe a valid model: {details}") from None
    return HFModelConfig(architecture, model_type, arch, None if dtype is None else str(dtype), quant)


def _optional_int(r: _Reader, key: str) -> int | None:
    return None if r.raw.get(key) is None else r.int(key)


def _eos_ids(r: _Reader) -> list[int]:
    value = r.raw.get("eos_token_id")
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise r.fail(f"eos_token_id must be an integer or a list of integers (got {value!r})")
    return list(values)


def _quantization(r: _Reader) -> Fp8BlockQuantization | None:
    q = r.raw.get("quantization_config")
    if q is None:
        return None
    if not isinstance(q, dict):
        raise r.fail(f"quantization_config must be an object (got {q!r})")
    method = q.get("quant_method")
    if method != "fp8":
        raise r.fail(
            f"quantization_config.quant_method {method!r} is not supported (only fp8 with "
            "weight_block_size [128, 128], as DeepSeek ships it)"
        )
    extra = sorted(set(q) - {"quant_method", "weight_block_size", "activation_scheme", "fmt"})
    if extra:
        raise r.fail(f"quantization_config field(s) {', '.join(extra)} are not implemented")
    if list(q.get("weight_block_size") or []) != list(FP8_BLOCK):
        raise r.fail(
            f"quantization_config.weight_block_size {q.get('weight_block_size')!r} is not supported "
            "(only [128, 128])"
        )
    if q.get("activation_scheme", "dynamic") != "dynamic":
        raise r.fail(f"quantization_config.activation_scheme {q.get('activation_scheme')!r} is not "
                     "supported (only dynamic)")
    if q.get("fmt", "e4m3") != "e4m3":
        raise r.fail(f"quantization_config.fmt {q.get('fmt')!r} is not supported (only e4m3)")
    return Fp8BlockQuantization()


def _rope(r: _Reader) -> dict[str, Any]:
    """rope_theta and rope_scaling from either the legacy keys or transformers 5's rope_parameters."""
    params = r.raw.get("rope_parameters") or r.raw.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise r.fail(f"rope_scaling must be an object or null (got {params!r})")
    key = "rope_parameters" if r.raw.get("rope_parameters") else "rope_scaling"
    extra = sorted(set(params) - _ROPE_KEYS)
    if extra:
        raise r.fail(f"{key} field(s) {', '.join(extra)} are not implemented")
    theta = params.get("rope_theta", r.raw.get("rope_theta", 10000.0))
    partial = params.get("partial_rotary_factor", r.raw.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise r.fail(f"partial_rotary_factor {partial!r} is not supported (only 1.0)")
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    out: dict[str, Any] = {"rope_theta": float(theta), "rope_scaling": None}
    if kind == "default":
        return out
    if kind != "yarn":
        raise r.fail(f"{key}.type {kind!r} is not supported (only yarn, or none)")
    max_pos = r.int("max_position_embeddings")
    original = params.get("original_max_position_embeddings") or max_pos
    factor = params.get("factor") or max_pos / original  # as transformers, when factor is null
    out["rope_scaling"] = RopeScaling(
        factor=float(factor),
        original_max_position_embeddings=int(original),
        beta_fast=float(params.get("beta_fast") or 32.0),  # transformers: `or 32` / `or 1`
        beta_slow=float(params.get("beta_slow") or 1.0),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        attention_factor=params.get("attention_factor"),
        truncate=bool(params.get("truncate", True)),
    )
    return out


def _deepseek(r: _Reader) -> dict[str, Any]:
    r.require("scoring_func", ("sigmoid",), "sigmoid")
    r.require("topk_method", ("noaux_tc",), "noaux_tc")
    r.require("moe_layer_freq", (1,), 1)
    r.require("qk_layernorm", (False,), False)
    heads, kv_heads = r.int("num_attention_heads"), r.int("num_key_value_heads", r.int("num_attention_heads"))
    if kv_heads != heads:
        raise r.fail(f"num_key_value_heads ({kv_heads}) must equal num_attention_heads ({heads}) for MLA")
    nope, rope = r.int("qk_nope_head_dim"), r.int("qk_rope_head_dim")
    if r.raw.get("qk_head_dim") is not None and r.int("qk_head_dim") != nope + rope:
        raise r.fail(f"qk_head_dim ({r.raw['qk_head_dim']}) must be qk_nope_head_dim + qk_rope_head_dim")
    if r.raw.get("head_dim") is not None and r.int("head_dim") != rope:
        raise r.fail(f"head_dim ({r.raw['head_dim']}) must equal qk_rope_head_dim ({rope})")
    mtp = r.raw.get("num_nextn_predict_layers", r.raw.get("num_mtp_layers"))
    return {
        "attention": AttentionKind.MLA,
        "scoring": RouterScoring.SIGMOID,
        "first_k_dense_layers": r.int("first_k_dense_replace", 0),
        "dense_intermediate_size": r.int("intermediate_size"),
        "num_routed_experts": r.int("n_routed_experts"),
        "num_shared_experts": r.int("n_shared_experts", 0),
        "n_group": r.int("n_group", 1),
        "topk_group": r.int("topk_group", 1),
        "routed_scaling_factor": r.num("routed_scaling_factor", 1.0),
        "norm_topk_prob": r.bool("norm_topk_prob", True),
        "q_lora_rank": r.int("q_lora_rank", 0),
        "kv_lora_rank": r.int("kv_lora_rank"),
        "qk_nope_head_dim": nope,
        "qk_rope_head_dim": rope,
        "v_head_dim": r.int("v_head_dim"),
        "rope_interleave": r.bool("rope_interleave", True),
        "num_nextn_predict_layers": 0 if mtp is None else int(mtp),
    }


def _qwen3_moe(r: _Reader) -> dict[str, Any]:
    if r.bool("use_sliding_window", False):
        raise r.fail("use_sliding_window true is not supported (sliding-window attention)")
    layer_types = r.raw.get("layer_types")
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        kinds = sorted(set(layer_types))
        raise r.fail(f"layer_types other than full_attention are not supported (got {kinds})")
    layers = r.int("num_hidden_layers")
    experts = r.raw.get("num_experts", r.raw.get("num_local_experts"))
    if not isinstance(experts, int) or experts < 1:
        raise r.fail(f"num_experts must be a positive integer (got {experts!r})")
    step = r.int("decoder_sparse_step", 1)
    mlp_only = r.get("mlp_only_layers", [])
    if not isinstance(mlp_only, list) or not all(isinstance(i, int) for i in mlp_only):
        raise r.fail(f"mlp_only_layers must be a list of layer indices (got {mlp_only!r})")
    if step < 1:
        raise r.fail(f"decoder_sparse_step must be >= 1 (got {step})")
    # transformers: layer i is sparse iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
    dense = [i for i in range(layers) if i in mlp_only or (i + 1) % step]
    heads = r.int("num_attention_heads")
    return {
        "attention": AttentionKind.GQA,
        "scoring": RouterScoring.SOFTMAX,
        "first_k_dense_layers": 0,
        "mlp_only_layers": dense,
        "dense_intermediate_size": r.int("intermediate_size", 0),
        "num_routed_experts": experts,
        "num_shared_experts": 0,
        "norm_topk_prob": r.bool("norm_topk_prob", False),
        "num_kv_heads": r.int("num_key_value_heads", heads),
        "head_dim": r.int("head_dim", r.int("hidden_size") // heads),
    }


def arch_differences(expected: ModelArch, actual: ModelArch) -> list[FieldDifference]:
    """Fields (camelCase) where `actual` differs from `expected`, in declaration order. The
    architecture's name and the KV-cache element size (an engine choice) are not compared."""
    diffs = []
    for field in ModelArch.model_fields:
        if field in _NOT_COMPARED:
            continue
        a, b = getattr(expected, field), getattr(actual, field)
        if a != b:
            diffs.append(FieldDifference(to_camel(field), a, b))
    return diffs


def describe_differences(diffs: list[FieldDifference]) -> str:
    """'numLayers 61 vs 4, vocabSize 129280 vs 300'."""
    return ", ".join(str(d) for d in diffs)


def _show(value: Any) -> str:
    if isinstance(value, RopeScaling):
        return json.dumps(value.to_wire(), sort_keys=True)
    if isinstance(value, StrEnum):
        return value.value
    return str(value)
