"""Grouped GEMM over a rank's local experts, with tokens already sorted by local slot.

On CUDA with bf16 and 16-byte-aligned shapes, `torch._grouped_mm` runs all experts in one kernel.
Everywhere else a per-expert loop of plain matmuls over contiguous row ranges is used; it is the
reference the grouped kernel is tested against.
"""

from __future__ import annotations

from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn


class GemmImpl(StrEnum):
    AUTO = "auto"  # torch._grouped_mm where it is supported, else the loop.
    TORCH_GROUPED = "torch_grouped"
    LOOP = "loop"


def grouped_mm_supported(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether `torch._grouped_mm` takes these operands (CUDA kernels: bf16, dims multiple of 8)."""
    return (
        hasattr(torch, "_grouped_mm")
        and x.is_cuda
        and x.dtype == torch.bfloat16
        and w.dtype == torch.bfloat16
        and x.shape[1] % 8 == 0
        and w.shape[1] % 8 == 0
    )


def grouped_mm(
    x: torch.Tensor, w: torch.Tensor, tokens_per_group: torch.Tensor, impl: GemmImpl = GemmImpl.AUTO
) -> torch.Tensor:
    """Row-grouped x @ w[g].T.

    Args:
        x: [P, D_in] rows sorted by group.
        w: [G, D_out, D_in] one weight per group (nn.Linear layout).
        tokens_per_group: [G] int64 rows per group, summing to P.
        impl: which kernel; TORCH_GROUPED raises if torch lacks `_grouped_mm`.
    Returns:
        [P, D_out] in x's dtype.
    """
    if x.shape[1] != w.shape[2] or tokens_per_group.shape[0] != w.shape[0]:
        raise ValueError(
            f"x {tuple(x.shape)}, w {tuple(w.shape)} and tokens_per_group "
            f"{tuple(tokens_per_group.shape)} do not fit together"
        )
    if impl is GemmImpl.AUTO:
        impl = GemmImpl.TORCH_GROUPED if grouped_mm_supported(x, w) else GemmImpl.LOOP
    if impl is GemmImpl.TORCH_GROUPED:
        if not hasattr(torch, "_grouped_mm"):
            raise RuntimeError(f"torch {torch.__version__} has no _grouped_mm")
        if x.shape[0] == 0:
            return x.new_zeros(0, w.shape[1])
        offs = torch.cumsum(tokens_per_group, 0).to(torch.int32)
        # The column-major view of w is the operand layout the CUDA kernels expect.
        return torch._grouped_mm(x, w.transpose(1, 2), offs=offs)
    out = x.new_empty(x.shape[0], w.shape[1])
    start = 0
    for g, n in enumerate(tokens_per_group.tolist()):
        if n:
            torch.matmul(x[start : start + n], w[g].t(), out=out[start : start + n])
        start += n
    return out


class GroupedExperts(nn.Module):
    """The routed experts held by one rank's S slots (SwiGLU), stacked for grouped GEMM.

    Parameters:
        w13: [S, 2 * I, hidden] gate_proj rows then up_proj rows of each slot's expert.
        w2: [S, hidden, I] down_proj of each slot's expert.
    """

    def __init__(self, num_slots: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        # Inference only: no autograd on expert weights (the loop kernel writes with out=).
        w13 = torch.zeros(num_slots, 2 * intermediate_size, hidden_size)
        self.w13 = nn.Parameter(w13, requires_grad=False)
        self.w2 = nn.Parameter(torch.zeros(num_slots, hidden_size, intermediate_size), requires_grad=False)
        self.impl = GemmImpl.AUTO

    def forward(self, x: torch.Tensor, tokens_per_slot: torch.Tensor) -> torch.Tensor:
        """x [P, hidden] sorted by slot, tokens_per_slot [S] -> [P, hidden]."""
        h = grouped_mm(x, self.w13, tokens_per_slot, self.impl)
        inter = self.intermediate_size
        return grouped_mm(F.silu(h[:, :inter]) * h[:, inter:], self.w2, tokens_per_slot, self.impl)
