"""DeepSeek's FP8 block-quantised weights: dequantisation at load, and FP8 matmuls where a GPU has them.

A quantised linear weight W [N, K] is stored as `float8_e4m3fn` with `weight_scale_inv`
[ceil(N/128), ceil(K/128)] float32: block (i, j) of W is `fp8[i*128:(i+1)*128, j*128:(j+1)*128] *
scale_inv[i, j]` (DeepSeek's `weight_dequant`). On the CPU, and on GPUs without block-scaled FP8
GEMMs, `dequantize_block_fp8` turns each tensor (one expert's at a time) into the serving dtype at
load. Where `torch.nn.functional.scaled_mm` runs 1x128 x 128x128 block-scaled FP8 GEMMs (Hopper),
`Fp8Linear` keeps the weight in FP8 and quantises activations per token and 128-column group on
the fly (DeepSeek's `activation_scheme: dynamic`). `fp8_gemm_available(device)` probes that once
per device against the dequantised product, so a device or torch build without it falls back.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn
BLOCK = 128


def dequantize_block_fp8(
    weight: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.float32, block: int = BLOCK
) -> torch.Tensor:
    """weight [N, K] float8_e4m3fn, scale_inv [ceil(N/block), ceil(K/block)] -> [N, K] in `dtype`."""
    n, k = weight.shape
    rows, cols = -(-n // block), -(-k // block)
    if tuple(scale_inv.shape) != (rows, cols):
        raise ValueError(
            f"weight_scale_inv has shape {tuple(scale_inv.shape)}; a [{n}, {k}] weight in {block}x{block} "
            f"blocks needs ({rows}, {cols})"
        )
    scale = scale_inv.float().repeat_interleave(block, 0)[:n].repeat_interleave(block, 1)[:, :k]
    return (weight.float() * scale).to(dtype)


def quantize_activations(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (K a multiple of `block`) -> (fp8 [M, K], scale [M, K/block] fp32) with
    x ~= fp8 * scale per (row, 128-column group)."""
    m, k = x.shape
    groups = x.float().view(m, k // block, block)
    scale = groups.abs().amax(-1).clamp(min=1e-12) / FP8_MAX
    q = (groups / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.view(m, k), scale


def _scaled_mm_block(
    x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """x [M, K] @ dequant(weight [N, K]).T with block-scaled FP8 operands: [M, N] in out_dtype."""
    q, x_scale = quantize_activations(x)
    # cuBLAS wants the activation scales outer-dim-major (a transposed, contiguous copy).
    x_scale = x_scale.t().contiguous().t()
    return F.scaled_mm(
        q, weight.t(),
        x_scale, F.ScalingType.BlockWise1x128,
        scale_inv.t(), F.ScalingType.BlockWise128x128,
        output_dtype=out_dtype,
    )


@functools.cache
def fp8_gemm_available(device: str) -> bool:
    """Whether block-scaled FP8 GEMMs run, and run correctly, on `device` (probed once)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available() or not hasattr(F, "scaled_mm"):
        return False
    if torch.cuda.get_device_capability(dev) < (8, 9):
        return False
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        w = torch.randn(256, 256, generator=gen)
        scale_inv = torch.rand(2, 2, generator=gen) * 0.01 + 0.001
        w8 = (w / scale_inv.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)).to(FP8_DTYPE)
        x = torch.randn(128, 256, generator=gen)
        want = x @ dequantize_block_fp8(w8, scale_inv).T
        got = _scaled_mm_block(x.to(dev, torch.bfloat16), w8.to(dev), scale_inv.to(dev), torch.float32)
        err = (got.float().cpu() - want).abs().max().item()
        return err <= 0.05 * want.abs().max().item()
    except (RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError):
        return False


class Fp8Linear(nn.Module):
    """A linear layer over a block-quantised FP8 weight, computed with FP8 GEMMs.

    Holds weight [N, K] float8_e4m3fn and weight_scale_inv [ceil(N/128), ceil(K/128)] fp32
    (Hugging Face names), and an optional bias [N]. K and N must be multiples of 128.
    """

    def __init__(self, weight: torch.Tensor, scale_inv: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        n, k = weight.shape
        if n % BLOCK or k % BLOCK:
            raise ValueError(f"an FP8 GEMM needs dims that are multiples of {BLOCK}, got [{n}, {k}]")
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_scale_inv = nn.Parameter(scale_inv.float(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> [..., N] in x's dtype."""
        flat = x.reshape(-1, x.shape[-1])
        out = _scaled_mm_block(flat, self.weight, self.weight_scale_inv, x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], out.shape[-1])


def swap_in_fp8_linears(model: nn.Module, fp8_weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Replace each `nn.Linear` whose weight name is in `fp8_weights` ({"...q_b_proj.weight":
    (fp8, scale_inv)}) by an `Fp8Linear` on the same device; returns how many were replaced."""
    replaced = 0
    for name, module in list(model.named_modules()):
        key = f"{name}.weight"
        if not isinstance(module, nn.Linear) or key not in fp8_weights:
            continue
        weight, scale_inv = fp8_weights[key]
        device = module.weight.device
        bias = None if module.bias is None else module.bias.detach()
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Fp8Linear(weight.to(device), scale_inv.to(device), bias))
        replaced += 1
    return replaced
