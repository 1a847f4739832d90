"""transformers' own logits for a checkpoint directory (the reference every model test compares to)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch


@cache
def hf_model(directory: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()


def hf_logits(directory: Path, ids: list[int], state_dict: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """[len(ids), vocab] fp32 logits of transformers' model at every position (optionally with
    `state_dict` loaded over the checkpoint's weights)."""
    model = hf_model(directory)
    if state_dict is not None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        assert not unexpected, unexpected
        assert all("lm_head" in m for m in missing), missing  # a tied head only
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()
