"""The single-process reference: the definition of a correct forward pass.

Plain torch over a full state dict (Hugging Face names), one sequence at a time, no cache, no
expert parallelism: attention over the whole sequence with a causal mask, the router written out
as in DeepSeek-V3's / Qwen3's modeling code, and routed experts as a loop over logical experts.
The EP engine, the paged attention path and chunked prefill are all tested against it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from moeplane.api.arch import AttentionKind, ModelArch, RouterScoring
from moeplane.workers.model.layers import rms_norm, swiglu
from moeplane.workers.model.rope import Rope, gqa_softmax_scale, mla_softmax_scale

Weights = Mapping[str, torch.Tensor]


def _linear(w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    """x @ W.T (+ bias when the checkpoint has `name.bias`)."""
    return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q, k [L, n, d], v [L, n, dv] -> [L, n, dv]."""
    length = q.shape[0]
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    mask = torch.ones(length, length, dtype=torch.bool).triu(1)
    probs = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v)


def _mla(arch: ModelArch, w: Weights, p: str, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    n, vd = arch.num_attention_heads, arch.v_head_dim
    nope, rope = arch.qk_nope_head_dim, arch.qk_rope_head_dim
    eps, length = arch.rms_norm_eps, x.shape[0]
    rotary = Rope.for_arch(arch, rope, interleaved=arch.rope_interleave)
    if arch.q_lora_rank:
        q = F.linear(rms_norm(_linear(w, f"{p}.q_a_proj", x), w[f"{p}.q_a_layernorm.weight"], eps),
                     w[f"{p}.q_b_proj.weight"])
    else:
        q = F.linear(x, w[f"{p}.q_proj.weight"])
    q = q.view(length, n, nope + rope)
    ckv = _linear(w, f"{p}.kv_a_proj_with_mqa", x)
    c, k_pe = ckv[:, : arch.kv_lora_rank], ckv[:, arch.kv_lora_rank :]
    kv = F.linear(rms_norm(c, w[f"{p}.kv_a_layernorm.weight"], eps), w[f"{p}.kv_b_proj.weight"])
    kv = kv.view(length, n, nope + vd)
    q_pe = rotary.apply(q[..., nope:], pos)
    k_pe = rotary.apply(k_pe.view(length, 1, rope), pos)
    qf = torch.cat((q[..., :nope], q_pe), -1)
    kf = torch.cat((kv[..., :nope], k_pe.expand(length, n, rope)), -1)
    out = _causal_attention(qf, kf, kv[..., nope:], mla_softmax_scale(arch))
    return _linear(w, f"{p}.o_proj", out.reshape(length, n * vd))


def _gqa(arch: ModelArch, w: Weights, p: str, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    n, kvh, d = arch.num_attention_heads, arch.num_kv_heads, arch.head_dim
    eps, length = arch.rms_norm_eps, x.shape[0]
    rotary = Rope.for_arch(arch, d, interleaved=False)
    q = rms_norm(_linear(w, f"{p}.q_proj", x).view(length, n, d), w[f"{p}.q_norm.weight"], eps)
    k = rms_norm(_linear(w, f"{p}.k_proj", x).view(length, kvh, d), w[f"{p}.k_norm.weight"], eps)
    v = _linear(w, f"{p}.v_proj", x).view(length, kvh, d)
    q, k = rotary.apply(q, pos), rotary.apply(k, pos)
    k, v = k.repeat_interleave(n // kvh, dim=1), v.repeat_interleave(n // kvh, dim=1)
    out = _causal_attention(q, k, v, gqa_softmax_scale(arch))
    return _linear(w, f"{p}.o_proj", out.reshape(length, n * d))


def reference_route(
    arch: ModelArch, w: Weights, p: str, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ids [L, K] and weights [L, K], written out as in the Hugging Face gate modules."""
    logits = F.linear(x.float(), w[f"{p}.gate.weight"].float())
    k = arch.num_experts_per_tok
    if arch.scoring is RouterScoring.SOFTMAX:
        topk_weight, topk_idx = torch.topk(logits.softmax(dim=-1), k, dim=-1)
    else:
        scores = logits.sigmoid()
        for_choice = scores + w[f"{p}.gate.e_score_correction_bias"].float().unsqueeze(0)
        tokens, groups = x.shape[0], arch.n_group
        per_group = arch.num_routed_experts // groups
        group_scores = for_choice.view(tokens, groups, per_group).topk(min(2, per_group), dim=-1)[0].sum(-1)
        group_idx = torch.topk(group_scores, k=arch.topk_group, dim=-1)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(tokens, groups, per_group).reshape(tokens, -1)
        tmp = for_choice.masked_fill(~score_mask.bool(), float("-inf"))
        topk_idx = torch.topk(tmp, k=k, dim=-1)[1]
        topk_weight = scores.gather(1, topk_idx)
    if arch.norm_topk_prob:  # Qwen3: no epsilon; DeepSeek-V3: + 1e-20, even for top-1
        eps = 0.0 if arch.scoring is RouterScoring.SOFTMAX else 1e-20
        topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + eps)
    return topk_idx, topk_weight * arch.routed_scaling_factor


def _mlp(w: Weights, p: str, x: torch.Tensor) -> torch.Tensor:
    return swiglu(x, w[f"{p}.gate_proj.weight"], w[f"{p}.up_proj.weight"], w[f"{p}.down_proj.weight"])


def _moe(arch: ModelArch, w: Weights, p: str, x: torch.Tensor) -> torch.Tensor:
    topk_idx, topk_weight = reference_route(arch, w, p, x)
    out = torch.zeros_like(x)
    for e in range(arch.num_routed_experts):
        tok, slot = (topk_idx == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        pe = f"{p}.experts.{e}"
        y = _mlp(w, pe, x[tok])
        out.index_add_(0, tok, y * topk_weight[tok, slot].unsqueeze(1).to(x.dtype))
    if arch.num_shared_experts:
        ps = f"{p}.shared_experts"
        out = out + _mlp(w, ps, x)
    return out


@torch.no_grad()
def reference_hidden(arch: ModelArch, w: Weights, input_ids: torch.Tensor) -> torch.Tensor:
    """One whole sequence: input_ids [L] int64 -> final-normed hidden states [L, hidden]."""
    pos = torch.arange(input_ids.shape[0])
    h = F.embedding(input_ids, w["model.embed_tokens.weight"])
    eps = arch.rms_norm_eps
    for i in range(arch.num_layers):
        p = f"model.layers.{i}"
        x = rms_norm(h, w[f"{p}.input_layernorm.weight"], eps)
        attn = _mla if arch.attention is AttentionKind.MLA else _gqa
        h = h + attn(arch, w, f"{p}.self_attn", x, pos)
        x = rms_norm(h, w[f"{p}.post_attention_layernorm.weight"], eps)
        if not arch.is_moe_layer(i):
            pm = f"{p}.mlp"
            h = h + _mlp(w, pm, x)
        else:
            h = h + _moe(arch, w, f"{p}.mlp", x)
    return rms_norm(h, w["model.norm.weight"], eps)


@torch.no_grad()
def reference_logits(arch: ModelArch, w: Weights, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids [L] int64 -> fp32 logits [L, vocab] at every position."""
    head = w["model.embed_tokens.weight"] if arch.tie_word_embeddings else w["lm_head.weight"]
    return F.linear(reference_hidden(arch, w, input_ids), head).float()


@torch.no_grad()
def reference_greedy(arch: ModelArch, w: Weights, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation by re-running the whole sequence each step (slow, obviously right)."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        ids.append(int(reference_logits(arch, w, torch.tensor(ids))[-1].argmax()))
    return ids[len(prompt) :]
