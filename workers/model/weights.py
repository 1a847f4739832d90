"""Weights under Hugging Face DeepSeek-V3 / Qwen3-MoE tensor names, from a seed or from safetensors.

A `WeightSource` hands out tensors by name; an EP rank asks only for the shared tensors and its
own experts' (`model.layers.{i}.mlp.experts.{e}.gate_proj.weight`, ...), so a safetensors
checkpoint is read selectively (safetensors reads a tensor's bytes only when it is asked for).
`RandomWeights` derives every tensor from (seed, name) alone, so any rank builds exactly the
experts the reference builds. FP8 block-scaled checkpoints (`weight_scale_inv`) are not read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from moeplane.api.arch import AttentionKind, ModelArch, RouterScoring
from safetensors import safe_open
from safetensors.torch import save_file

INDEX_FILE = "model.safetensors.index.json"
EXPERT_PROJS = ("gate_proj", "up_proj", "down_proj")


class WeightError(ValueError):
    """A tensor is missing from a checkpoint or has the wrong shape."""


def expert_weight_name(layer: int, expert: int, proj: str) -> str:
    return f"model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"


def _attention_shapes(arch: ModelArch, p: str) -> dict[str, tuple[int, ...]]:
    h, n = arch.hidden_size, arch.num_attention_heads
    if arch.attention is AttentionKind.GQA:
        d, kvh = arch.head_dim, arch.num_kv_heads
        return {
            f"{p}.q_proj.weight": (n * d, h), f"{p}.k_proj.weight": (kvh * d, h),
            f"{p}.v_proj.weight": (kvh * d, h), f"{p}.o_proj.weight": (h, n * d),
            f"{p}.q_norm.weight": (d,), f"{p}.k_norm.weight": (d,),
        }
    qk = arch.qk_nope_head_dim + arch.qk_rope_head_dim
    shapes: dict[str, tuple[int, ...]] = {}
    if arch.q_lora_rank:
        shapes[f"{p}.q_a_proj.weight"] = (arch.q_lora_rank, h)
        shapes[f"{p}.q_a_layernorm.weight"] = (arch.q_lora_rank,)
        shapes[f"{p}.q_b_proj.weight"] = (n * qk, arch.q_lora_rank)
    else:
        shapes[f"{p}.q_proj.weight"] = (n * qk, h)
    shapes[f"{p}.kv_a_proj_with_mqa.weight"] = (arch.kv_lora_rank + arch.qk_rope_head_dim, h)
    shapes[f"{p}.kv_a_layernorm.weight"] = (arch.kv_lora_rank,)
    shapes[f"{p}.kv_b_proj.weight"] = (n * (arch.qk_nope_head_dim + arch.v_head_dim), arch.kv_lora_rank)
    shapes[f"{p}.o_proj.weight"] = (h, n * arch.v_head_dim)
    return shapes


def weight_shapes(arch: ModelArch, include_routed_experts: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor of the full model by Hugging Face name, with its shape."""
    h, v, inter = arch.hidden_size, arch.vocab_size, arch.moe_intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(arch.num_layers):
        p = f"model.layers.{i}"
        shapes[f"{p}.input_layernorm.weight"] = (h,)
        shapes.update(_attention_shapes(arch, f"{p}.self_attn"))
        shapes[f"{p}.post_attention_layernorm.weight"] = (h,)
        if i < arch.first_k_dense_layers:
            d = arch.dense_intermediate_size
            shapes.update({f"{p}.mlp.gate_proj.weight": (d, h), f"{p}.mlp.up_proj.weight": (d, h),
                           f"{p}.mlp.down_proj.weight": (h, d)})
            continue
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
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
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
            self._shapes = weight_shapes(self.arch)
        try:
            return self._shapes[name]
        except KeyError:
            raise WeightError(f"{name!r} is not a tensor of {self.arch.name}") from None

    def get(self, name: str) -> torch.Tensor:
        shape = self.shape(name)
        digest = hashlib.blake2b(f"{self.seed}:{name}".encode(), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
        noise = torch.randn(shape, generator=gen)
        if name.endswith("norm.weight"):
            return 1.0 + 0.1 * noise
        if name.endswith("e_score_correction_bias"):
            return 0.1 * noise
        if name == "model.embed_tokens.weight":
            return noise
        return noise * shape[-1] ** -0.5


class StateDictWeights:
    """Weights from an in-memory name -> tensor mapping."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = dict(tensors)

    def get(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise WeightError(f"{name!r} is missing from the state dict") from None


class SafetensorsWeights:
    """A safetensors checkpoint: one file, or a directory of shards (with or without an index).

    `names_read` records which tensors were actually read, so callers can check that an EP rank
    touched only its own experts.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.names_read: set[str] = set()
        self._where: dict[str, Path] | None = None
        self._handles: dict[Path, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "names_read": set(), "_where": None, "_handles": {}}

    def _locate(self) -> dict[str, Path]:
        if self._where is not None:
            return self._where
        if self.path.is_file():
            files = [self.path]
        elif (self.path / INDEX_FILE).is_file():
            weight_map = json.loads((self.path / INDEX_FILE).read_text())["weight_map"]
            self._where = {name: self.path / f for name, f in weight_map.items()}
            return self._where
        else:
            files = sorted(self.path.glob("*.safetensors"))
            if not files:
                raise WeightError(f"no .safetensors files at {self.path}")
        where: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                where.update(dict.fromkeys(handle.keys(), f))
        self._where = where
        return where

    def get(self, name: str) -> torch.Tensor:
        where = self._locate()
        if name not in where:
            raise WeightError(f"tensor {name!r} is not in the checkpoint at {self.path}")
        f = where[name]
        if f not in self._handles:
            self._handles[f] = safe_open(str(f), framework="pt")
        self.names_read.add(name)
        return self._handles[f].get_tensor(name)


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


def check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(shape):
        raise WeightError(f"{name}: checkpoint shape {tuple(tensor.shape)}, model expects {tuple(shape)}")
    return tensor
