"""transformers' own logits for a checkpoint directory (the reference every model test compares to)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch


@cache
def hf_model(directory: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()


def hf_logits(directory: Path, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] fp32 logits of transformers' model at every position."""
    with torch.no_grad():
        return hf_model(directory)(torch.tensor([ids])).logits[0].float()
