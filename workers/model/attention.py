"""Data-parallel attention over a paged KV cache: DeepSeek MLA and Qwen3-style GQA.

Both mirror transformers' DeepseekV3Attention / Qwen3MoeAttention (biases, YaRN rope and MLA's
mscale-corrected softmax scale included). Both modules take the flat step batch `x [T, hidden]`
with its `AttentionMetadata` and an optional cache tensor of this layer ([num_blocks, block_size,
kv_elems]). With a cache, the new tokens' KV is written at `slot_mapping` and each sequence
attends over its whole cached context through its block table; without one (a cache-less
prefill), each sequence attends over its own new tokens. Either way a query at position p sees
context positions 0..p.

MLA caches the normalised compressed latent (kv_lora_rank) and the rotated shared key
(qk_rope_head_dim) per token, and expands the latent with `kv_b_proj` at attention time.
"""

from __future__ import annotations

import torch
from moeplane.api.arch import AttentionKind, ModelArch
from moeplane.workers.model.layers import RMSNorm
from moeplane.workers.model.metadata import AttentionMetadata, MetadataError, gather_context, pad_new_tokens
from moeplane.workers.model.rope import Rope, gqa_softmax_scale, mla_softmax_scale
from torch import nn


def _context(
    kv_new: torch.Tensor, meta: AttentionMetadata, cache: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence context [B, C, E] in kv_new's dtype and its validity mask [B, C]."""
    # An idle rank's empty step needs no cache (its metadata carries no block size).
    if cache is not None and meta.num_seqs:
        if meta.block_size != cache.shape[1]:
            raise MetadataError(
                f"metadata block_size {meta.block_size} != cache block size {cache.shape[1]}"
            )
        cache.view(-1, cache.shape[-1]).index_copy_(0, meta.slot_mapping, kv_new.to(cache.dtype))
        ctx, valid = gather_context(cache, meta)
        return ctx.to(kv_new.dtype), valid
    if not meta.is_prefill_only_from_scratch:
        raise MetadataError("a step that continues cached sequences needs a kv_cache")
    ctx, _ = pad_new_tokens(kv_new, meta)
    lens = torch.tensor(meta.seq_lens_new, dtype=torch.int64, device=kv_new.device)
    valid = torch.arange(meta.max_query_len, device=kv_new.device).unsqueeze(0) < lens.unsqueeze(1)
    return ctx, valid


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    valid: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Causal attention of each new token over its sequence's context.

    Args:
        q: [T, n_heads, d_qk] queries of the new tokens.
        k: [B, C, n_kv_heads, d_qk] and v: [B, C, n_kv_heads, d_v], the context (n_heads is a
            multiple of n_kv_heads).
        valid: [B, C] bool, real context tokens.
    Returns:
        [T, n_heads, d_v] in q's dtype.
    """
    num_heads, n_kv = q.shape[1], k.shape[2]
    q_pad, flat_idx = pad_new_tokens(q, meta)  # [B, Q, n, d]
    pos_pad, _ = pad_new_tokens(meta.positions, meta)  # [B, Q]; padded queries sit at position 0
    b, qlen = q_pad.shape[:2]
    q_g = q_pad.view(b, qlen, n_kv, num_heads // n_kv, q.shape[-1]).float()
    scores = torch.einsum("bqhgd,bchd->bhgqc", q_g, k.float()) * scale
    key_pos = torch.arange(k.shape[1], device=q.device)
    allowed = valid.unsqueeze(1) & (key_pos.view(1, 1, -1) <= pos_pad.unsqueeze(-1))  # [B, Q, C]
    scores = scores.masked_fill(~allowed[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bhgqc,bchd->bqhgd", probs, v.float()).reshape(b * qlen, num_heads, v.shape[-1])
    return out[flat_idx].to(q.dtype)


class MLAAttention(nn.Module):
    """DeepSeek-V3 multi-head latent attention, with Hugging Face parameter names."""

    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        h, n, bias = arch.hidden_size, arch.num_attention_heads, arch.attention_bias
        self.num_heads = n
        self.nope, self.rope, self.v_dim = arch.qk_nope_head_dim, arch.qk_rope_head_dim, arch.v_head_dim
        self.kv_lora_rank = arch.kv_lora_rank
        self.rotary = Rope.for_arch(arch, self.rope, interleaved=arch.rope_interleave)
        qk = self.nope + self.rope
        self.q_lora_rank = arch.q_lora_rank
        # Biases where transformers' DeepseekV3Attention puts them (q_proj and q_b_proj have none).
        if arch.q_lora_rank:
            self.q_a_proj = nn.Linear(h, arch.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(arch.q_lora_rank, arch.rms_norm_eps)
            self.q_b_proj = nn.Linear(arch.q_lora_rank, n * qk, bias=False)
        else:
            self.q_proj = nn.Linear(h, n * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, arch.kv_lora_rank + self.rope, bias=bias)
        self.kv_a_layernorm = RMSNorm(arch.kv_lora_rank, arch.rms_norm_eps)
        self.kv_b_proj = nn.Linear(arch.kv_lora_rank, n * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(n * self.v_dim, h, bias=bias)
        self.scale = mla_softmax_scale(arch)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, cache: torch.Tensor | None) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]; writes [T, kv_lora_rank + rope] latents into the cache."""
        t = x.shape[0]
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.q_lora_rank else self.q_proj(x)
        q = q.view(t, self.num_heads, self.nope + self.rope)
        q_pe = self.rotary.apply(q[..., self.nope :], meta.positions)
        q = torch.cat((q[..., : self.nope], q_pe), dim=-1)
        ckv = self.kv_a_proj_with_mqa(x)
        latent = self.kv_a_layernorm(ckv[:, : self.kv_lora_rank])
        k_pe = self.rotary.apply(ckv[:, None, self.kv_lora_rank :], meta.positions)
        ctx, valid = _context(torch.cat((latent, k_pe[:, 0]), dim=-1), meta, cache)
        b, c = ctx.shape[:2]
        kv = self.kv_b_proj(ctx[..., : self.kv_lora_rank]).view(b, c, self.num_heads, self.nope + self.v_dim)
        k_pe_ctx = ctx[..., self.kv_lora_rank :].unsqueeze(2).expand(b, c, self.num_heads, self.rope)
        k = torch.cat((kv[..., : self.nope], k_pe_ctx), dim=-1)
        out = attend(q, k, kv[..., self.nope :], valid, meta, self.scale)
        return self.o_proj(out.reshape(t, self.num_heads * self.v_dim))


class GQAAttention(nn.Module):
    """Qwen3-style grouped-query attention with per-head q/k RMSNorm; caches rotated K and V."""

    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        h, n, kvh, d = arch.hidden_size, arch.num_attention_heads, arch.num_kv_heads, arch.head_dim
        bias = arch.attention_bias
        self.num_heads, self.num_kv_heads, self.head_dim = n, kvh, d
        self.rotary = Rope.for_arch(arch, d, interleaved=False)
        self.q_proj = nn.Linear(h, n * d, bias=bias)
        self.k_proj = nn.Linear(h, kvh * d, bias=bias)
        self.v_proj = nn.Linear(h, kvh * d, bias=bias)
        self.o_proj = nn.Linear(n * d, h, bias=bias)
        self.q_norm = RMSNorm(d, arch.rms_norm_eps)
        self.k_norm = RMSNorm(d, arch.rms_norm_eps)
        self.scale = gqa_softmax_scale(arch)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, cache: torch.Tensor | None) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]; writes [T, 2 * kv_heads * head_dim] (K then V) into the cache."""
        t, kvh, d = x.shape[0], self.num_kv_heads, self.head_dim
        q = self.rotary.apply(self.q_norm(self.q_proj(x).view(t, self.num_heads, d)), meta.positions)
        k = self.rotary.apply(self.k_norm(self.k_proj(x).view(t, kvh, d)), meta.positions)
        v = self.v_proj(x)
        ctx, valid = _context(torch.cat((k.reshape(t, kvh * d), v), dim=-1), meta, cache)
        b, c = ctx.shape[:2]
        k_ctx = ctx[..., : kvh * d].reshape(b, c, kvh, d)
        v_ctx = ctx[..., kvh * d :].reshape(b, c, kvh, d)
        out = attend(q, k_ctx, v_ctx, valid, meta, self.scale)
        return self.o_proj(out.reshape(t, self.num_heads * d))


def make_attention(arch: ModelArch) -> MLAAttention | GQAAttention:
    return MLAAttention(arch) if arch.attention is AttentionKind.MLA else GQAAttention(arch)
