"""Rotary position embedding, plain or YaRN-scaled, written as transformers computes it.

`Rope.for_arch` mirrors `transformers.modeling_rope_utils` (`_compute_default_rope_parameters`
and `_compute_yarn_parameters`): the inverse frequencies [dim/2] and the `attention_factor` that
scales cos and sin. MLA models (DeepSeek-V3, Kimi K2) also fold YaRN's `mscale_all_dim` into the
softmax scale (`mla_softmax_scale`, transformers' `yarn_apply_mscale`); GQA models do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from moeplane.api.arch import ModelArch, RopeScaling


def yarn_get_mscale(scale: float = 1.0, mscale: float = 1.0) -> float:
    """YaRN's mscale (its Eq. 21): 0.1 * mscale * ln(scale) + 1, and 1 for scale <= 1."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _yarn(scaling: RopeScaling, dim: int, base: float) -> tuple[torch.Tensor, float]:
    factor = scaling.factor
    attention_factor = scaling.attention_factor
    if attention_factor is None:
        if scaling.mscale and scaling.mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, scaling.mscale) / yarn_get_mscale(
                factor, scaling.mscale_all_dim
            )
        else:
            attention_factor = yarn_get_mscale(factor)
    original = scaling.original_max_position_embeddings

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no singularity, as transformers
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extrapolation_factor = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv_freq, float(attention_factor)


@dataclass(frozen=True)
class Rope:
    """One attention layer's rotary embedding.

    Attributes:
        inv_freq: [dim/2] fp32 inverse frequencies (on the CPU; moved to x's device when applied).
        attention_factor: scale of cos and sin (1 without YaRN).
        interleaved: rotary pairs are adjacent elements (DeepSeek's `rope_interleave`); the output
            is then in the regrouped (halves) order, as in transformers, which leaves q.k unchanged.
    """

    inv_freq: torch.Tensor
    attention_factor: float
    interleaved: bool

    @classmethod
    def for_arch(cls, arch: ModelArch, dim: int, interleaved: bool) -> Rope:
        base = arch.rope_theta
        if arch.rope_scaling is None:
            inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
            return cls(inv_freq, 1.0, interleaved)
        inv_freq, factor = _yarn(arch.rope_scaling, dim, base)
        return cls(inv_freq, factor, interleaved)

    def apply(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [T, H, D] at positions [T] int64 -> [T, H, D] in x's dtype (computed in fp32)."""
        dim = x.shape[-1]
        freqs = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq.to(x.device)  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # [T, 1, D]
        cos, sin = emb.cos() * self.attention_factor, emb.sin() * self.attention_factor
        xf = x.float()
        if self.interleaved:
            xf = xf.unflatten(-1, (dim // 2, 2)).transpose(-1, -2).reshape(xf.shape)
        half = dim // 2
        rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
        return (xf * cos + rotated * sin).to(x.dtype)


def mla_softmax_scale(arch: ModelArch) -> float:
    """MLA's attention scale: (nope + rope)^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN."""
    scale = (arch.qk_nope_head_dim + arch.qk_rope_head_dim) ** -0.5
    scaling = arch.rope_scaling
    if scaling is not None and scaling.mscale_all_dim:
        m = yarn_get_mscale(scaling.factor, scaling.mscale_all_dim)
        scale = scale * m * m
    return scale


def gqa_softmax_scale(arch: ModelArch) -> float:
    return arch.head_dim**-0.5
