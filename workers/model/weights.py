"""Weights under Hugging Face DeepSeek-V3 / Qwen3-MoE tensor names, from a seed or from safetensors.

A `WeightSource` hands out tensors by name; an EP rank asks only for the shared tensors and its
own experts' (`model.layers.{i}.mlp.experts.{e}.gate_proj.weight`, ...), so a safetensors
checkpoint is read selectively (safetensors reads a tensor's bytes only when it is asked for).
`RandomWeights` derives every tensor from (seed, name) alone, so any rank builds exactly the
experts the reference builds. `SafetensorsWeights` (in `hf_weights`, re-exported here) reads a
Hugging Face checkpoint directory: sharded, memory-mapped, dtype-checked, FP8 dequantised.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from moeplane.api.arch import AttentionKind, ModelArch, RouterScoring
from moeplane.workers.model.hf_weights import INDEX_FILE, SafetensorsWeights, WeightError
from safetensors.torch import save_file

EXPERT_PROJS = ("gate_proj", "up_proj", "down_proj")

__all__ = [
    "INDEX_FILE",
    "RandomWeights",
    "SafetensorsWeights",
    "StateDictWeights",
    "WeightError",
    "WeightSource",
    "check_shape",
    "expert_weight_name",
    "full_state_dict",
    "mtp_weight_shapes",
    "save_checkpoint",
    "weight_shapes",
]


def expert_weight_name(layer: int, expert: int, proj: str) -> str:
    return f"model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"


def _attention_shapes(arch: ModelArch, p: str) -> dict[str, tuple[int, ...]]:
    h, n = arch.hidden_size, arch.num_attention_heads
    if arch.attention is AttentionKind.GQA:
        d, kvh = arch.head_dim, arch.num_kv_heads
        shapes = {
            f"{p}.q_proj.weight": (n * d, h), f"{p}.k_proj.weight": (kvh * d, h),
            f"{p}.v_proj.weight": (kvh * d, h), f"{p}.o_proj.weight": (h, n * d),
            f"{p}.q_norm.weight": (d,), f"{p}.k_norm.weight": (d,),
        }
        if arch.attention_bias:
            shapes.update({f"{p}.q_proj.bias": (n * d,), f"{p}.k_proj.bias": (kvh * d,),
                           f"{p}.v_proj.bias": (kvh * d,), f"{p}.o_proj.bias": (h,)})
        return shapes
    qk = arch.qk_nope_head_dim + arch.qk_rope_head_dim
    kv_a = arch.kv_lora_rank + arch.qk_rope_head_dim
    shapes = {}
    if arch.q_lora_rank:
        shapes[f"{p}.q_a_proj.weight"] = (arch.q_lora_rank, h)
        shapes[f"{p}.q_a_layernorm.weight"] = (arch.q_lora_rank,)
        shapes[f"{p}.q_b_proj.weight"] = (n * qk, arch.q_lora_rank)
        if arch.attention_bias:
            shapes[f"{p}.q_a_proj.bias"] = (arch.q_lora_rank,)
    else:
        shapes[f"{p}.q_proj.weight"] = (n * qk, h)
    shapes[f"{p}.kv_a_proj_with_mqa.weight"] = (kv_a, h)
    shapes[f"{p}.kv_a_layernorm.weight"] = (arch.kv_lora_rank,)
    shapes[f"{p}.kv_b_proj.weight"] = (n * (arch.qk_nope_head_dim + arch.v_head_dim), arch.kv_lora_rank)
    shapes[f"{p}.o_proj.weight"] = (h, n * arch.v_head_dim)
    if arch.attention_bias:
        shapes[f"{p}.kv_a_proj_with_mqa.bias"] = (kv_a,)
        shapes[f"{p}.o_proj.bias"] = (h,)
    return shapes


def _layer_shapes(arch: ModelArch, i: int, include_routed_experts: bool) -> dict[str, tuple[int, ...]]:
    h, inter = arch.hidden_size, arch.moe_intermediate_size
    p = f"model.layers.{i}"
    shapes: dict[str, tuple[int, ...]] = {f"{p}.input_layernorm.weight": (h,)}
    shapes.update(_attention_shapes(arch, f"{p}.self_attn"))
    shapes[f"{p}.post_attention_layernorm.weight"] = (h,)
    if not arch.is_moe_layer(i):
        d = arch.dense_intermediate_size
        shapes.update({f"{p}.mlp.gate_proj.weight": (d, h), f"{p}.mlp.up_proj.weight": (d, h),
                       f"{p}.mlp.down_proj.weight": (h, d)})
        return shapes
    shapes[f"{p}.mlp.gate.weight"] = (arch.num_routed_experts, h)
    if arch.scoring is RouterScoring.SIGMOID:
        shapes[f"{p}.mlp.gate.e_score_correction_bias"] = (arch.num_routed_experts,)
    if arch.num_shared_experts:
        s = inter * arch.num_shared_experts
        shapes.update({f"{p}.mlp.shared_experts.gate_proj.weight": (s, h),
                       f"{p}.mlp.shared_experts.up_proj.weight": (s, h),
                       f"{p}.mlp.shared_experts.down_proj.weight": (h, s)})
    if include_routed_experts:
        for e in range(arch.num_routed_experts):
            shapes[expert_weight_name(i, e, "gate_proj")] = (inter, h)
            shapes[expert_weight_name(i, e, "up_proj")] = (inter, h)
            shapes[expert_weight_name(i, e, "down_proj")] = (h, inter)
    return shapes


def weight_shapes(arch: ModelArch, include_routed_experts: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor of the main model (no MTP layers) by Hugging Face name, with its shape."""
    h, v = arch.hidden_size, arch.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(arch.num_layers):
        shapes.update(_layer_shapes(arch, i, include_routed_experts))
    shapes["model.norm.weight"] = (h,)
    if not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    return shapes


def mtp_weight_shapes(arch: ModelArch, include_routed_experts: bool = True) -> dict[str, tuple[int, ...]]:
    """DeepSeek-V3's multi-token-prediction layers (`model.layers.{num_layers + k}`): a MoE decoder
    layer plus enorm, hnorm, eh_proj and shared_head.norm. The embedding and head are the main
    model's (DeepSeek's layer copies of them are identical and are not read)."""
    h = arch.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for k in range(arch.num_nextn_predict_layers):
        i = arch.num_layers + k
        p = f"model.layers.{i}"
        shapes.update({f"{p}.enorm.weight": (h,), f"{p}.hnorm.weight": (h,),
                       f"{p}.eh_proj.weight": (h, 2 * h), f"{p}.shared_head.norm.weight": (h,)})
        shapes.update(_layer_shapes(arch, i, include_routed_experts))
    return shapes


@runtime_checkable
class WeightSource(Protocol):
    """Tensors by Hugging Face name. Implementations are picklable (they cross process boundaries)."""

    def get(self, name: str) -> torch.Tensor: ...


class RandomWeights:
    """Deterministic random weights: each tensor is a function of (seed, name) only.

    Linear weights are N(0, 1/fan_in) so activations stay O(1) at any depth; norm weights are
    1 + N(0, 0.1^2) and the router bias N(0, 0.1^2), so neither is a no-op in tests.
    """

    def __init__(self, arch: ModelArch, seed: int) -> None:
        self.arch, self.seed = arch, seed
        self._shapes: dict[str, tuple[int, ...]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"arch": self.arch, "seed": self.seed, "_shapes": None}

    def shape(self, name: str) -> tuple[int, ...]:
        if self._shapes is None:
            self._shapes = {**weight_shapes(self.arch), **mtp_weight_shapes(self.arch)}
        try:
            return self._shapes[name]
        except KeyError:
            raise WeightError(f"{name!r} is not a tensor of {self.arch.name}") from None

    def __contains__(self, name: object) -> bool:
        try:
            self.shape(str(name))
        except WeightError:
            return False
        return True

    def get(self, name: str) -> torch.Tensor:
        shape = self.shape(name)
        digest = hashlib.blake2b(f"{self.seed}:{name}".encode(), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
        noise = torch.randn(shape, generator=gen)
        if name.endswith("norm.weight"):
            return 1.0 + 0.1 * noise
        if name.endswith("e_score_correction_bias") or name.endswith(".bias"):
            return 0.1 * noise
        if name == "model.embed_tokens.weight":
            return noise
        return noise * shape[-1] ** -0.5


class StateDictWeights:
    """Weights from an in-memory name -> tensor mapping."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = dict(tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def get(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise WeightError(f"{name!r} is missing from the state dict") from None


def save_checkpoint(
    arch: ModelArch, source: WeightSource, path: str | Path, names: Iterable[str] | None = None,
    shard_per_layer: bool = False, dtype: torch.dtype = torch.float32,
) -> Path:
    """Write `names` (default: the full model) as safetensors; returns the file or directory.

    `shard_per_layer` writes one file per layer plus the Hugging Face index, like real releases.
    """
    path = Path(path)
    names = list(weight_shapes(arch)) if names is None else list(names)
    tensors = {n: source.get(n).to(dtype).contiguous() for n in names}
    if not shard_per_layer:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))
        return path
    path.mkdir(parents=True, exist_ok=True)
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for n, t in tensors.items():
        parts = n.split(".")
        key = f"layer-{int(parts[2]):05d}" if n.startswith("model.layers.") else "other"
        shards.setdefault(f"model-{key}.safetensors", {})[n] = t
    for fname, group in shards.items():
        save_file(group, str(path / fname))
    weight_map = {n: fname for fname, group in shards.items() for n in group}
    (path / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    return path


def full_state_dict(arch: ModelArch, source: WeightSource) -> dict[str, torch.Tensor]:
    """Every tensor of the model (for the single-process reference and checkpoint writing)."""
    return {name: source.get(name) for name in weight_shapes(arch)}


def check_shape(
    name: str, tensor: torch.Tensor, shape: tuple[int, ...], source: WeightSource | None = None
) -> torch.Tensor:
    """`tensor` if it has `shape`; else a WeightError naming the tensor (and its file, when the
    source knows it)."""
    if tuple(tensor.shape) != tuple(shape):
        where = getattr(source, "where", None)
        at = f" in {where(name)}" if where is not None else ""
        raise WeightError(f"{name}{at}: checkpoint shape {tuple(tensor.shape)}, model expects {tuple(shape)}")
    return tensor
