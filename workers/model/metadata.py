"""Paged KV cache and per-step attention metadata (vLLM-style), for one DP-attention rank.

A step is a flat batch of T new tokens from B sequences; prefill chunks and decode tokens mix
freely. Sequence b owns tokens `query_start_loc[b]:query_start_loc[b+1]` of the flat batch; after
the step it has `context_lens[b]` tokens in the cache, the new ones being the last of them.

The cache of one layer is a tensor [num_blocks, block_size, kv_elems]: token j of sequence b lives
at block `block_tables[b, j // block_size]`, offset `j % block_size`, i.e. at flat slot
`block * block_size + offset`. `kv_elems` is `ModelArch.kv_elements_per_token_per_layer`: the MLA
latent plus the rotary key (kv_lora_rank + qk_rope_head_dim), or K and V of every KV head for GQA,
so KV bytes per token equal the real model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from moeplane.api.arch import ModelArch


class MetadataError(ValueError):
    """Attention metadata that does not describe a valid step."""


@dataclass(frozen=True)
class SeqStep:
    """One sequence's share of a step, in plain ints (what a scheduler knows).

    Attributes:
        num_computed_tokens: tokens of this sequence already in the KV cache before the step.
        num_new_tokens: tokens this step computes (a prefill chunk, or 1 for decode).
        block_table: cache block ids holding the sequence, in order; must cover
            `num_computed_tokens + num_new_tokens` tokens.
        needs_logits: whether the step returns logits for this sequence's last new token (False
            for a prefill chunk that does not end the prompt).
    """

    num_computed_tokens: int
    num_new_tokens: int
    block_table: tuple[int, ...] = ()
    needs_logits: bool = True


@dataclass(frozen=True)
class AttentionMetadata:
    """Attention metadata for one step on one DP rank. Tensors are int64 on the model's device.

    Attributes:
        positions: [T] position of each new token within its sequence.
        query_start_loc: [B+1] cumulative new-token counts; sequence b owns tokens
            `query_start_loc[b]:query_start_loc[b+1]`.
        context_lens: [B] tokens of each sequence in the cache after this step.
        block_tables: [B, max_blocks] cache block ids per sequence; unused entries are 0.
        slot_mapping: [T] flat cache slot (`block * block_size + offset`) each new token's KV is
            written to.
        logits_indices: [N] indices into the T new tokens whose logits the step returns.
        seq_lens_new: the per-sequence new-token counts as Python ints (no device sync needed).
        context_lens_host: `context_lens` as Python ints.
        block_size: tokens per cache block (0 for a cache-less step).
    """

    positions: torch.Tensor
    query_start_loc: torch.Tensor
    context_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    logits_indices: torch.Tensor
    seq_lens_new: tuple[int, ...]
    context_lens_host: tuple[int, ...]
    block_size: int

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_new)

    @property
    def max_query_len(self) -> int:
        return max(self.seq_lens_new, default=0)

    @property
    def max_context_len(self) -> int:
        return max(self.context_lens_host, default=0)

    @property
    def is_prefill_only_from_scratch(self) -> bool:
        """True when every sequence starts at position 0 (a cache-less forward is possible)."""
        return all(c == n for c, n in zip(self.context_lens_host, self.seq_lens_new, strict=True))

    def to(self, device: torch.device | str) -> AttentionMetadata:
        return AttentionMetadata(
            positions=self.positions.to(device),
            query_start_loc=self.query_start_loc.to(device),
            context_lens=self.context_lens.to(device),
            block_tables=self.block_tables.to(device),
            slot_mapping=self.slot_mapping.to(device),
            logits_indices=self.logits_indices.to(device),
            seq_lens_new=self.seq_lens_new,
            context_lens_host=self.context_lens_host,
            block_size=self.block_size,
        )


def build_metadata(
    steps: Sequence[SeqStep], block_size: int, device: torch.device | str = "cpu"
) -> AttentionMetadata:
    """Metadata for a step from each sequence's plain-int schedule; validates every field.

    `block_size=0` builds a cache-less step (no block tables; every sequence must start at 0).
    """
    if block_size < 0:
        raise MetadataError(f"block_size must be >= 0, got {block_size}")
    positions: list[int] = []
    starts = [0]
    context_lens: list[int] = []
    slots: list[int] = []
    logits_idx: list[int] = []
    max_blocks = max((len(s.block_table) for s in steps), default=0)
    for b, s in enumerate(steps):
        if s.num_computed_tokens < 0 or s.num_new_tokens < 1:
            raise MetadataError(
                f"sequence {b}: num_computed_tokens={s.num_computed_tokens} must be >= 0 and "
                f"num_new_tokens={s.num_new_tokens} must be >= 1"
            )
        total = s.num_computed_tokens + s.num_new_tokens
        if block_size == 0:
            if s.num_computed_tokens:
                raise MetadataError(
                    f"sequence {b}: a cache-less step cannot continue from {s.num_computed_tokens} "
                    "computed tokens; pass a block_size and block_table"
                )
        elif len(s.block_table) * block_size < total:
            raise MetadataError(
                f"sequence {b}: block_table has {len(s.block_table)} blocks of {block_size} tokens, "
                f"too few for {total} tokens"
            )
        for j in range(s.num_computed_tokens, total):
            positions.append(j)
            if block_size:
                slots.append(s.block_table[j // block_size] * block_size + j % block_size)
        starts.append(starts[-1] + s.num_new_tokens)
        context_lens.append(total)
        if s.needs_logits:
            logits_idx.append(starts[-1] - 1)
    tables = torch.zeros(len(steps), max_blocks, dtype=torch.int64)
    for b, s in enumerate(steps):
        if s.block_table:
            tables[b, : len(s.block_table)] = torch.tensor(s.block_table, dtype=torch.int64)
    if block_size and len(set(slots)) != len(slots):
        raise MetadataError("two new tokens map to the same cache slot; block tables overlap")

    def t(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    return AttentionMetadata(
        positions=t(positions),
        query_start_loc=t(starts),
        context_lens=t(context_lens),
        block_tables=tables.to(device),
        slot_mapping=t(slots),
        logits_indices=t(logits_idx),
        seq_lens_new=tuple(s.num_new_tokens for s in steps),
        context_lens_host=tuple(context_lens),
        block_size=block_size,
    )


def prefill_metadata(seq_lens: Sequence[int], device: torch.device | str = "cpu") -> AttentionMetadata:
    """Cache-less metadata for whole prompts of the given lengths (logits of each last token)."""
    return build_metadata([SeqStep(0, n) for n in seq_lens], block_size=0, device=device)


def allocate_kv_cache(
    arch: ModelArch,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """One zeroed cache tensor per layer, each [num_blocks, block_size, kv_elems] of `dtype`."""
    if num_blocks < 1 or block_size < 1:
        raise MetadataError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be >= 1")
    kv_elems = arch.kv_elements_per_token_per_layer
    return [
        torch.zeros(num_blocks, block_size, kv_elems, dtype=dtype, device=device)
        for _ in range(arch.num_layers)
    ]


def kv_cache_bytes_per_block(arch: ModelArch, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one block over all layers (what a block manager budgets per block)."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return arch.kv_elements_per_token_per_layer * arch.num_layers * block_size * itemsize


def write_kv(cache: torch.Tensor, slot_mapping: torch.Tensor, kv: torch.Tensor) -> None:
    """Store new tokens' KV: cache [num_blocks, block_size, E], slot_mapping [T], kv [T, E]."""
    cache.view(-1, cache.shape[-1]).index_copy_(0, slot_mapping, kv.to(cache.dtype))


def gather_context(cache: torch.Tensor, meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sequence's cached context, padded.

    Returns:
        kv: [B, max_context_len, E] in the cache's dtype; padded rows hold slot 0's contents.
        valid: [B, max_context_len] bool, True for real context tokens.
    """
    num_seqs, max_ctx = meta.num_seqs, meta.max_context_len
    device = cache.device
    j = torch.arange(max_ctx, device=device)
    valid = j.unsqueeze(0) < meta.context_lens.unsqueeze(1)
    block_idx = (j // meta.block_size).clamp(max=max(meta.block_tables.shape[1] - 1, 0))
    if meta.block_tables.shape[1] == 0:
        blocks = torch.zeros(num_seqs, max_ctx, dtype=torch.int64, device=device)
    else:
        blocks = meta.block_tables[:, block_idx]
    slots = torch.where(valid, blocks * meta.block_size + j % meta.block_size, 0)
    flat = cache.view(-1, cache.shape[-1])
    return flat[slots.reshape(-1)].view(num_seqs, max_ctx, cache.shape[-1]), valid


def pad_new_tokens(x: torch.Tensor, meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a flat per-token tensor [T, ...] to [B, max_query_len, ...] by sequence.

    Returns the padded tensor (zeros in the padding) and the flat index [T] of each new token in
    the padded [B * max_query_len] layout.
    """
    num_seqs, max_q = meta.num_seqs, meta.max_query_len
    seq_of_token = torch.repeat_interleave(
        torch.arange(num_seqs, device=x.device),
        torch.tensor(meta.seq_lens_new, dtype=torch.int64, device=x.device),
        output_size=meta.num_tokens,
    )
    offset = torch.arange(meta.num_tokens, device=x.device) - meta.query_start_loc[seq_of_token]
    flat_idx = seq_of_token * max_q + offset
    padded = x.new_zeros((num_seqs * max_q, *x.shape[1:]))
    padded[flat_idx] = x
    return padded.view(num_seqs, max_q, *x.shape[1:]), flat_idx
