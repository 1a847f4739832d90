"""Token sampling: greedy, temperature, top-p, per-request seeds.

A seeded request draws its n-th output token from a generator seeded with (seed, n), so the
stream is reproducible no matter how the request is batched, preempted, or moved from a prefill
rank to a decode rank mid-way. Unseeded requests draw from the engine's own generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from moeplane.workers.serving.sequence import SamplingParams

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, index) pairs over 63 bits


def token_generator(seed: int, output_index: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed((seed * _MIX + output_index) % (2**63 - 1))
    return gen


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p` (at least one).

    probs: [V] float32 summing to 1 -> [V] renormalised, zero outside the nucleus.
    """
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=0) - sorted_probs
    sorted_probs = torch.where(mass_before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    kept = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return kept / kept.sum()


class Sampler:
    def __init__(self, seed: int = 0) -> None:
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(seed)

    def __call__(
        self, logits: torch.Tensor, params: Sequence[SamplingParams], output_indices: Sequence[int]
    ) -> list[int]:
        """logits [N, V] (any float dtype/device) -> one token id per row.

        `output_indices[i]` is how many output tokens row i's request already has.
        """
        if logits.shape[0] != len(params) or len(params) != len(output_indices):
            raise ValueError(
                f"{logits.shape[0]} logits rows for {len(params)} params / {len(output_indices)} indices"
            )
        logits = logits.detach().float().cpu()
        greedy = logits.argmax(dim=-1).tolist()
        tokens = []
        for row, (p, index) in enumerate(zip(params, output_indices, strict=True)):
            if p.is_greedy:
                tokens.append(int(greedy[row]))
                continue
            probs = top_p_filter(torch.softmax(logits[row] / p.temperature, dim=-1), p.top_p)
            gen = self._generator if p.seed is None else token_generator(p.seed, index)
            tokens.append(int(torch.multinomial(probs, 1, generator=gen)))
        return tokens
