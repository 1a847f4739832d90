"""Synthetic expert loads shared by the EPLB tests (the benchmark has its own generator)."""

from __future__ import annotations

import torch


def zipf_load(num_layers: int, num_experts: int, s: float, seed: int, tokens: float = 1e6) -> torch.Tensor:
    """[L, E] float64: Zipf(s) popularity over experts, independently permuted in every layer."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.arange(1, num_experts + 1, dtype=torch.float64) ** -s
    p = p / p.sum()
    rows = [p[torch.randperm(num_experts, generator=gen)] for _ in range(num_layers)]
    return (torch.stack(rows) * tokens).round()


def drifted(load: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """`load` with every expert's popularity multiplied by exp(N(0, sigma)), same total."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(load.shape, generator=gen, dtype=torch.float64) * sigma
    out = load * noise.exp()
    return (out * load.sum(-1, keepdim=True) / out.sum(-1, keepdim=True)).round()
