"""Model presets with the published architecture constants (from each model's config.json).

DeepSeek-V3 and R1 share deepseek-ai/DeepSeek-V3's config.json; kimi-k2 is moonshotai/Kimi-K2-Instruct's;
qwen3-235b-a22b is Qwen/Qwen3-235B-A22B's. `moeplane.api.hf_config.arch_from_hf_config` maps such a file
to the same fields, so a preset and a checkpoint can be compared field by field.
"""

from __future__ import annotations

from enum import StrEnum

from moeplane.api.arch import AttentionKind, ModelArch, RopeScaling, RouterScoring


class ModelPreset(StrEnum):
    DEEPSEEK_V3 = "deepseek-v3"
    DEEPSEEK_R1 = "deepseek-r1"
    KIMI_K2 = "kimi-k2"
    QWEN3_235B_A22B = "qwen3-235b-a22b"
    TINY = "tiny"


_DEEPSEEK_V3 = ModelArch(
    name="deepseek-v3",
    attention=AttentionKind.MLA,
    scoring=RouterScoring.SIGMOID,
    vocab_size=129280,
    hidden_size=7168,
    num_layers=61,
    first_k_dense_layers=3,
    dense_intermediate_size=18432,
    moe_intermediate_size=2048,
    num_routed_experts=256,
    num_shared_experts=1,
    num_experts_per_tok=8,
    n_group=8,
    topk_group=4,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    num_attention_heads=128,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
    weight_bytes_per_param=1.0,  # FP8 weights, as released.
    kv_bytes_per_element=2.0,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=163840,
    rope_scaling=RopeScaling(
        factor=40.0, original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0,
        mscale=1.0, mscale_all_dim=1.0,
    ),
    num_nextn_predict_layers=1,
    bos_token_id=0,
    eos_token_ids=[1],
)

MODEL_PRESETS: dict[ModelPreset, ModelArch] = {
    ModelPreset.DEEPSEEK_V3: _DEEPSEEK_V3,
    ModelPreset.DEEPSEEK_R1: _DEEPSEEK_V3.model_copy(update={"name": "deepseek-r1"}),
    ModelPreset.KIMI_K2: ModelArch(
        name="kimi-k2",
        attention=AttentionKind.MLA,
        scoring=RouterScoring.SIGMOID,
        vocab_size=163840,
        hidden_size=7168,
        num_layers=61,
        first_k_dense_layers=1,
        dense_intermediate_size=18432,
        moe_intermediate_size=2048,
        num_routed_experts=384,
        num_shared_experts=1,
        num_experts_per_tok=8,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=2.827,
        norm_topk_prob=True,
        num_attention_heads=64,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        weight_bytes_per_param=1.0,
        kv_bytes_per_element=2.0,
        rms_norm_eps=1e-6,
        rope_theta=50000.0,
        max_position_embeddings=131072,
        rope_scaling=RopeScaling(
            factor=32.0, original_max_position_embeddings=4096, beta_fast=1.0, beta_slow=1.0,
            mscale=1.0, mscale_all_dim=1.0,
        ),
        bos_token_id=163584,
        eos_token_ids=[163585],
    ),
    ModelPreset.QWEN3_235B_A22B: ModelArch(
        name="qwen3-235b-a22b",
        attention=AttentionKind.GQA,
        scoring=RouterScoring.SOFTMAX,
        vocab_size=151936,
        hidden_size=4096,
        num_layers=94,
        first_k_dense_layers=0,
        dense_intermediate_size=12288,
        moe_intermediate_size=1536,
        num_routed_experts=128,
        num_shared_experts=0,
        num_experts_per_tok=8,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=1.0,
        norm_topk_prob=True,
        num_attention_heads=64,
        num_kv_heads=4,
        head_dim=128,
        weight_bytes_per_param=2.0,  # BF16 release.
        kv_bytes_per_element=2.0,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
        bos_token_id=151643,
        eos_token_ids=[151645],
    ),
    # CPU-sized, same shape as DeepSeek-V3: MLA, dense first layer, shared + routed experts,
    # group-limited sigmoid routing. Byte-level vocabulary (256 bytes + BOS/EOS/PAD + spare).
    ModelPreset.TINY: ModelArch(
        name="tiny",
        attention=AttentionKind.MLA,
        scoring=RouterScoring.SIGMOID,
        vocab_size=260,
        hidden_size=64,
        num_layers=4,
        first_k_dense_layers=1,
        dense_intermediate_size=128,
        moe_intermediate_size=32,
        num_routed_experts=16,
        num_shared_experts=1,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        num_attention_heads=4,
        q_lora_rank=32,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        weight_bytes_per_param=4.0,  # fp32 on the CPU.
        kv_bytes_per_element=4.0,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=2048,
    ),
}


def model_preset(name: str | ModelPreset) -> ModelArch:
    """The architecture of a preset; raises ValueError listing the known presets."""
    try:
        return MODEL_PRESETS[ModelPreset(name)]
    except ValueError:
        known = ", ".join(p.value for p in ModelPreset)
        raise ValueError(f"unknown model preset {name!r}; known presets: {known}") from None
