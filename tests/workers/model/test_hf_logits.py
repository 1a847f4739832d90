"""Our model computes what transformers computes, on checkpoints transformers itself built.

For DeepSeek-V3 (MLA with q compression, YaRN with mscale != mscale_all_dim, nonzero router bias),
DeepSeek-V3 without q compression (attention biases, non-interleaved rope, tied embeddings) and
Qwen3-MoE (GQA, q/k norm, softmax routing, an mlp-only layer, YaRN): the single-process reference
and `EPModelRunner` (cache-less, and paged with chunked prefill then decode steps) equal
transformers' fp32 logits within 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from moeplane.api.hf_config import read_hf_config
from moeplane.workers.model import (
    EPModelRunner,
    SafetensorsWeights,
    SeqStep,
    build_metadata,
    prefill_metadata,
)
from moeplane.workers.model.reference import reference_logits
from moeplane.workers.model.weights import full_state_dict

from tests.checkpoints import KINDS
from tests.workers.model.hf_reference import hf_logits

pytestmark = pytest.mark.unit

TOL = 1e-4
PROMPT = [5, 77, 300, 12, 9, 250, 31, 31, 140, 2, 66, 301, 17]
DECODED = [44, 380, 7]


@pytest.mark.parametrize("kind", KINDS)
def test_reference_and_runner_equal_transformers(hf_checkpoint, kind: str) -> None:
    path = hf_checkpoint(kind)
    arch = read_hf_config(path).arch
    want = hf_logits(path, PROMPT)
    weights = full_state_dict(arch, SafetensorsWeights(path))
    if arch.scoring.value == "sigmoid":
        bias = weights[f"model.layers.{arch.moe_layer_indices[0]}.mlp.gate.e_score_correction_bias"]
        assert bias.abs().min() > 0  # the correction bias is really there
    ref = reference_logits(arch, weights, torch.tensor(PROMPT))
    assert (ref - want).abs().max().item() < TOL
    runner = EPModelRunner(arch, SafetensorsWeights(path))
    got = runner.forward(torch.tensor(PROMPT), prefill_metadata([len(PROMPT)]))
    assert (got[0] - want[-1]).abs().max().item() < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_paged_chunked_prefill_and_decode_equal_transformers(hf_checkpoint, kind: str) -> None:
    path = hf_checkpoint(kind)
    arch = read_hf_config(path).arch
    full = PROMPT + DECODED
    want = hf_logits(path, full)
    runner = EPModelRunner(arch, SafetensorsWeights(path))
    block, table = 4, tuple(range(2, 8))
    cache = runner.allocate_kv_cache(8, block)
    rows = []
    # Chunked prefill: 5 tokens (no logits), then 8 (logits of the prompt's last token).
    steps = [(0, 5, False), (5, 8, True)] + [(len(PROMPT) + i, 1, True) for i in range(len(DECODED))]
    for start, n, logits in steps:
        meta = build_metadata([SeqStep(start, n, table, needs_logits=logits)], block)
        out = runner.forward(torch.tensor(full[start : start + n]), meta, cache)
        if logits:
            rows.append((start + n - 1, out[0]))
    for pos, row in rows:
        assert (row - want[pos]).abs().max().item() < TOL, pos
