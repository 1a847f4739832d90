"""The engine's single-rank forward against the plain reference, MLA/sigmoid and GQA/softmax."""

from __future__ import annotations

import pytest
import torch
from moeplane.api.arch import AttentionKind, ModelArch, RouterScoring
from moeplane.api.presets import model_preset
from moeplane.workers.model import EPModelRunner, RandomWeights, prefill_metadata
from moeplane.workers.model.reference import reference_hidden, reference_logits, reference_route
from moeplane.workers.model.router import RouterConfig, route
from moeplane.workers.model.weights import full_state_dict

pytestmark = pytest.mark.unit

TINY = model_preset("tiny")
# Qwen3-shaped: GQA with q/k norms, softmax top-k, no shared experts, no dense layers.
TINY_QWEN = ModelArch(
    name="tiny-qwen3", attention=AttentionKind.GQA, scoring=RouterScoring.SOFTMAX, vocab_size=260,
    hidden_size=64, num_layers=3, first_k_dense_layers=0, dense_intermediate_size=0,
    moe_intermediate_size=32, num_routed_experts=8, num_shared_experts=0, num_experts_per_tok=2,
    num_attention_heads=4, num_kv_heads=2, head_dim=16, weight_bytes_per_param=4.0,
    kv_bytes_per_element=4.0, rope_theta=1e6,
)


@pytest.mark.parametrize("arch", [TINY, TINY_QWEN], ids=lambda a: a.name)
def test_cacheless_prefill_matches_reference(arch: ModelArch) -> None:
    runner = EPModelRunner(arch, weights=11)
    w = full_state_dict(arch, RandomWeights(arch, 11))
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 256, (n,), generator=gen) for n in (7, 1, 12)]
    hidden = runner.forward_hidden(torch.cat(seqs), prefill_metadata([len(s) for s in seqs]))
    ref = torch.cat([reference_hidden(arch, w, s) for s in seqs])
    assert hidden.shape == ref.shape == (20, arch.hidden_size)
    assert (hidden - ref).abs().max().item() < 1e-5
    logits = runner.forward(torch.cat(seqs), prefill_metadata([len(s) for s in seqs]))
    ref_last = torch.stack([reference_logits(arch, w, s)[-1] for s in seqs])
    assert (logits - ref_last).abs().max().item() < 1e-5


def test_first_layers_dense_and_the_rest_moe() -> None:
    runner = EPModelRunner(TINY, weights=0)
    kinds = [type(layer.mlp).__name__ for layer in runner.model.model.layers]
    assert kinds == ["DenseMLP", "MoEBlock", "MoEBlock", "MoEBlock"]
    latent = runner.model.model.layers[0].self_attn.kv_a_proj_with_mqa.weight
    assert latent.shape == (TINY.kv_lora_rank + TINY.qk_rope_head_dim, TINY.hidden_size)


def _route_weights(arch: ModelArch, seed: int, tokens: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, arch.hidden_size, generator=gen)
    w = {
        "p.gate.weight": torch.randn(arch.num_routed_experts, arch.hidden_size, generator=gen),
        "p.gate.e_score_correction_bias": 0.3 * torch.randn(arch.num_routed_experts, generator=gen),
    }
    return x, w


@pytest.mark.parametrize("arch", [TINY, TINY_QWEN], ids=lambda a: a.name)
def test_router_matches_reference_gate(arch: ModelArch) -> None:
    x, w = _route_weights(arch, 3, 64)
    bias = w["p.gate.e_score_correction_bias"] if arch.scoring is RouterScoring.SIGMOID else None
    ids, weights = route(x @ w["p.gate.weight"].T, bias, RouterConfig.from_arch(arch))
    ref_ids, ref_weights = reference_route(arch, w, "p", x)
    order, ref_order = ids.sort(-1), ref_ids.sort(-1)
    assert torch.equal(order.values, ref_order.values)
    assert torch.allclose(weights.gather(1, order.indices), ref_weights.gather(1, ref_order.indices))
    assert torch.allclose(weights.sum(-1), torch.full((64,), arch.routed_scaling_factor))


def test_group_limited_routing_stays_in_topk_groups_and_bias_steers_only_choice() -> None:
    x, w = _route_weights(TINY, 4, 128)
    cfg = RouterConfig.from_arch(TINY)
    logits = x @ w["p.gate.weight"].T
    ids, _ = route(logits, w["p.gate.e_score_correction_bias"], cfg)
    per_group = TINY.num_routed_experts // TINY.n_group
    groups_used = torch.tensor([len(set((row // per_group).tolist())) for row in ids])
    assert int(groups_used.max()) <= TINY.topk_group
    # A large bias on one expert forces it into every token's choice...
    bias = torch.zeros(TINY.num_routed_experts)
    bias[5] = 100.0
    forced_ids, forced_w = route(logits, bias, cfg)
    assert bool((forced_ids == 5).any(-1).all())
    # ...but weights are the unbiased sigmoid scores, renormalised and scaled.
    scores = logits.sigmoid().gather(1, forced_ids)
    expected = scores / scores.sum(-1, keepdim=True) * TINY.routed_scaling_factor
    assert torch.allclose(forced_w, expected, atol=1e-6)


@pytest.mark.gpu
def test_cuda_bf16_runner_tracks_the_fp32_reference() -> None:
    runner = EPModelRunner(TINY, weights=11, device="cuda", dtype=torch.bfloat16)
    w = full_state_dict(TINY, RandomWeights(TINY, 11))
    ids = torch.randint(0, 256, (16,), generator=torch.Generator().manual_seed(2))
    hidden = runner.forward_hidden(ids, prefill_metadata([16], device="cuda")).float().cpu()
    ref = reference_hidden(TINY, w, ids)
    cos = torch.nn.functional.cosine_similarity(hidden, ref, dim=-1)
    # bf16 rounding can flip a near-tied routing choice for a token or two; most tokens match.
    assert float(cos.median()) > 0.995
