"""Paged KV cache: decode, chunked prefill and mixed steps against the reference full forward."""

from __future__ import annotations

import pytest
import torch
from moeplane.api.arch import AttentionKind, ModelArch, RouterScoring
from moeplane.api.presets import model_preset
from moeplane.workers.model import (
    EPModelRunner,
    MetadataError,
    RandomWeights,
    SeqStep,
    build_metadata,
    kv_cache_bytes_per_block,
)
from moeplane.workers.model.reference import reference_greedy, reference_logits
from moeplane.workers.model.weights import full_state_dict

pytestmark = pytest.mark.unit

TINY = model_preset("tiny")
TINY_QWEN = ModelArch(
    name="tiny-qwen3", attention=AttentionKind.GQA, scoring=RouterScoring.SOFTMAX, vocab_size=260,
    hidden_size=64, num_layers=2, first_k_dense_layers=0, dense_intermediate_size=0,
    moe_intermediate_size=32, num_routed_experts=8, num_shared_experts=0, num_experts_per_tok=2,
    num_attention_heads=4, num_kv_heads=2, head_dim=16, weight_bytes_per_param=4.0,
    kv_bytes_per_element=4.0,
)
BLOCK = 4


class Blocks:
    """A tiny block allocator handing out shuffled block ids, so tables are never contiguous."""

    def __init__(self, num_blocks: int, seed: int = 0) -> None:
        self.free = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
        self.tables: dict[int, list[int]] = {}

    def table(self, seq: int, num_tokens: int) -> tuple[int, ...]:
        t = self.tables.setdefault(seq, [])
        while len(t) * BLOCK < num_tokens:
            t.append(self.free.pop())
        return tuple(t)


def _prompts(seed: int, lens: tuple[int, ...]) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=gen).tolist() for n in lens]


@pytest.mark.parametrize("arch", [TINY, TINY_QWEN], ids=lambda a: a.name)
def test_paged_greedy_decode_equals_reference(arch: ModelArch) -> None:
    runner = EPModelRunner(arch, weights=5)
    w = full_state_dict(arch, RandomWeights(arch, 5))
    cache = runner.allocate_kv_cache(num_blocks=32, block_size=BLOCK)
    blocks = Blocks(32)
    prompts = _prompts(2, (6, 11))
    new_tokens = 5
    seqs = [list(p) for p in prompts]
    computed = [0, 0]
    for step in range(new_tokens):
        steps, ids = [], []
        for b, s in enumerate(seqs):
            n_new = len(s) - computed[b]
            steps.append(SeqStep(computed[b], n_new, blocks.table(b, len(s))))
            ids += s[computed[b] :]
        logits = runner.forward(torch.tensor(ids), build_metadata(steps, BLOCK), cache)
        for b, s in enumerate(seqs):
            ref = reference_logits(arch, w, torch.tensor(s))[-1]
            assert (logits[b] - ref).abs().max().item() < 1e-4, (step, b)
            # Same greedy token from the same prefix at every step: identical greedy sequences.
            assert int(logits[b].argmax()) == int(ref.argmax()), (step, b)
            computed[b] = len(s)
            s.append(int(logits[b].argmax()))
    assert seqs[0][len(prompts[0]) : len(prompts[0]) + 2] == reference_greedy(arch, w, prompts[0], 2)


def test_chunked_prefill_equals_one_shot_and_mixes_with_decode() -> None:
    runner = EPModelRunner(TINY, weights=8)
    w = full_state_dict(TINY, RandomWeights(TINY, 8))
    long, short = _prompts(3, (13, 5))
    one_cache = runner.allocate_kv_cache(16, BLOCK)
    one_blocks = Blocks(16, seed=1)
    one_shot = runner.forward(
        torch.tensor(long), build_metadata([SeqStep(0, 13, one_blocks.table(0, 13))], BLOCK), one_cache
    )
    cache = runner.allocate_kv_cache(16, BLOCK)
    blocks = Blocks(16, seed=2)
    # Step 1: the short prompt whole, the long one's first chunk (no logits wanted for it).
    m1 = build_metadata(
        [SeqStep(0, 5, blocks.table(1, 5)), SeqStep(0, 5, blocks.table(0, 5), needs_logits=False)], BLOCK
    )
    out1 = runner.forward(torch.tensor(short + long[:5]), m1, cache)
    assert out1.shape == (1, TINY.vocab_size)
    nxt = int(out1[0].argmax())
    # Step 2: decode the short sequence while the long one's second and last chunks arrive.
    m2 = build_metadata([SeqStep(5, 1, blocks.table(1, 6)), SeqStep(5, 8, blocks.table(0, 13))], BLOCK)
    out2 = runner.forward(torch.tensor([nxt, *long[5:]]), m2, cache)
    assert (out2[1] - one_shot[0]).abs().max().item() < 1e-5
    ref_short = reference_logits(TINY, w, torch.tensor([*short, nxt]))[-1]
    assert (out2[0] - ref_short).abs().max().item() < 1e-5
    # The chunked cache holds the same latents as the one-shot cache, block by block.
    for layer_one, layer_chunked in zip(one_cache, cache, strict=True):
        a = layer_one[list(one_blocks.tables[0])].reshape(-1, layer_one.shape[-1])[:13]
        b = layer_chunked[list(blocks.tables[0])].reshape(-1, layer_chunked.shape[-1])[:13]
        assert (a - b).abs().max().item() < 1e-5


def test_cache_tensors_have_the_real_models_bytes_per_token() -> None:
    runner = EPModelRunner(TINY, weights=0)
    cache = runner.allocate_kv_cache(num_blocks=3, block_size=16)
    assert len(cache) == TINY.num_layers
    assert cache[0].shape == (3, 16, TINY.kv_lora_rank + TINY.qk_rope_head_dim)
    assert kv_cache_bytes_per_block(TINY, 16, torch.float32) / 16 == TINY.kv_bytes_per_token
    v3 = model_preset("deepseek-v3")
    assert kv_cache_bytes_per_block(v3, 64, torch.bfloat16) / 64 == v3.kv_bytes_per_token == 70272


def test_bad_metadata_is_rejected_with_the_numbers() -> None:
    with pytest.raises(MetadataError, match="2 blocks of 4 tokens, too few for 9"):
        build_metadata([SeqStep(0, 9, (0, 1))], BLOCK)
    with pytest.raises(MetadataError, match="same cache slot"):
        build_metadata([SeqStep(0, 2, (0,)), SeqStep(0, 2, (0,))], BLOCK)
    with pytest.raises(MetadataError, match="cache-less step cannot continue"):
        build_metadata([SeqStep(3, 1)], block_size=0)
    with pytest.raises(MetadataError, match="num_new_tokens=0"):
        build_metadata([SeqStep(3, 0, (0,))], BLOCK)
    runner = EPModelRunner(TINY, weights=0)
    meta = build_metadata([SeqStep(4, 1, (0, 1))], BLOCK)
    with pytest.raises(MetadataError, match="needs a kv_cache"):
        runner.forward(torch.tensor([1]), meta)
    assert meta.positions.tolist() == [4] and meta.slot_mapping.tolist() == [1 * BLOCK + 0]
