"""Model architectures: the published constants of the MoE models moeplane serves.

`ModelArch` is both the preset type and the explicit `spec.model.architecture` block of a
MoEDeployment, so a user can serve a model with no preset by writing these fields out.
"""

from __future__ import annotations

from enum import StrEnum

from moeplane.api.base import ApiModel
from pydantic import Field, model_validator


class AttentionKind(StrEnum):
    MLA = "mla"  # DeepSeek multi-head latent attention: cache one compressed latent per token.
    GQA = "gqa"  # Grouped-query attention: cache K and V for each KV head.


class RouterScoring(StrEnum):
    SIGMOID = "sigmoid"  # DeepSeek-V3: sigmoid scores + correction bias, group-limited top-k.
    SOFTMAX = "softmax"  # Qwen3 / Mixtral: softmax over all experts, plain top-k.


class RopeScalingType(StrEnum):
    YARN = "yarn"  # YaRN (DeepSeek-V3/R1, Kimi K2, Qwen3 long context)


class RopeScaling(ApiModel):
    """Rotary-embedding scaling, as in a Hugging Face config's `rope_scaling` (only YaRN)."""

    type: RopeScalingType = Field(RopeScalingType.YARN, description="Scaling kind: yarn.")
    factor: float = Field(gt=0, description="Context extension factor.")
    original_max_position_embeddings: int = Field(gt=0, description="Pretraining context length.")
    beta_fast: float = Field(32.0, gt=0, description="Extrapolation boundary of the linear ramp.")
    beta_slow: float = Field(1.0, gt=0, description="Interpolation boundary of the linear ramp.")
    mscale: float | None = Field(None, description="YaRN mscale of the rotary attention factor.")
    mscale_all_dim: float | None = Field(
        None, description="YaRN mscale of all dims; MLA folds its square into the softmax scale."
    )
    attention_factor: float | None = Field(
        None, gt=0, description="Explicit cos/sin scale; default derived from factor and mscales."
    )
    truncate: bool = Field(True, description="Round the correction range to whole dims.")


class ModelArch(ApiModel):
    """Architecture constants of a (DeepSeek-V3-shaped) MoE transformer."""

    name: str = Field(description="Architecture name, e.g. deepseek-v3.")
    attention: AttentionKind = Field(description="Attention kind: mla or gqa.")
    scoring: RouterScoring = Field(description="Router scoring: sigmoid (group-limited) or softmax.")
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0, description="Transformer layers, dense and MoE together.")
    first_k_dense_layers: int = Field(ge=0, description="The first k layers use a dense MLP.")
    dense_intermediate_size: int = Field(ge=0, description="Intermediate size of the dense MLPs.")
    moe_intermediate_size: int = Field(gt=0, description="Intermediate size of each expert.")
    num_routed_experts: int = Field(gt=0)
    num_shared_experts: int = Field(ge=0)
    num_experts_per_tok: int = Field(gt=0, description="Routed experts each token uses (top-k).")
    n_group: int = Field(1, gt=0, description="Expert groups for group-limited routing.")
    topk_group: int = Field(1, gt=0, description="Groups each token may route into.")
    routed_scaling_factor: float = Field(1.0, gt=0)
    norm_topk_prob: bool = True
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(0, ge=0, description="GQA only: KV heads.")
    head_dim: int = Field(0, ge=0, description="GQA only: per-head dimension.")
    q_lora_rank: int = Field(0, ge=0, description="MLA only: query compression rank (0 = none).")
    kv_lora_rank: int = Field(0, ge=0, description="MLA only: compressed KV latent rank.")
    qk_nope_head_dim: int = Field(0, ge=0, description="MLA only: non-rotary query/key dims.")
    qk_rope_head_dim: int = Field(0, ge=0, description="MLA only: rotary query/key dims.")
    v_head_dim: int = Field(0, ge=0, description="MLA only: value head dims.")
    weight_bytes_per_param: float = Field(
        2.0, gt=0, description="Bytes per linear weight element (1 for FP8, 2 for BF16)."
    )
    kv_bytes_per_element: float = Field(2.0, gt=0, description="Bytes per KV-cache element.")
    rms_norm_eps: float = Field(1e-6, gt=0)
    rope_theta: float = Field(10000.0, gt=0)
    max_position_embeddings: int = Field(4096, gt=0)
    mlp_only_layers: list[int] = Field(
        default_factory=list,
        description="Layers past the first k that also use a dense MLP (Qwen3 mlp_only_layers / "
        "decoder_sparse_step).",
    )
    attention_bias: bool = Field(
        False, description="Biases on the attention projections (as Hugging Face's attention_bias)."
    )
    rope_interleave: bool = Field(
        True, description="MLA only: rotary pairs are adjacent elements (DeepSeek's checkpoints)."
    )
    rope_scaling: RopeScaling | None = Field(None, description="Rotary scaling (YaRN); none by default.")
    tie_word_embeddings: bool = Field(False, description="The LM head shares the embedding matrix.")
    num_nextn_predict_layers: int = Field(
        0, ge=0, description="DeepSeek-V3 multi-token-prediction layers after the main layers."
    )
    bos_token_id: int | None = Field(None, ge=0, description="Beginning-of-sequence token id.")
    eos_token_ids: list[int] = Field(default_factory=list, description="End-of-sequence token ids.")

    @model_validator(mode="after")
    def _check_shape(self) -> ModelArch:
        problems = []
        if self.first_k_dense_layers > self.num_layers:
            problems.append(
                f"firstKDenseLayers ({self.first_k_dense_layers}) exceeds numLayers ({self.num_layers})"
            )
        if self.num_experts_per_tok > self.num_routed_experts:
            problems.append(
                f"numExpertsPerTok ({self.num_experts_per_tok}) exceeds numRoutedExperts "
                f"({self.num_routed_experts})"
            )
        if self.num_routed_experts % self.n_group:
            problems.append(
                f"numRoutedExperts ({self.num_routed_experts}) must divide into nGroup ({self.n_group})"
            )
        if self.topk_group > self.n_group:
            problems.append(f"topkGroup ({self.topk_group}) exceeds nGroup ({self.n_group})")
        if self.attention is AttentionKind.MLA and not (self.kv_lora_rank and self.v_head_dim):
            problems.append("mla attention needs kvLoraRank and vHeadDim")
        if self.attention is AttentionKind.GQA and not (self.num_kv_heads and self.head_dim):
            problems.append("gqa attention needs numKvHeads and headDim")
        if self.num_kv_heads and self.num_attention_heads % self.num_kv_heads:
            problems.append(
                f"numAttentionHeads ({self.num_attention_heads}) must be a multiple of numKvHeads "
                f"({self.num_kv_heads})"
            )
        if self.num_dense_layers and not self.dense_intermediate_size:
            problems.append("dense layers need denseIntermediateSize")
        bad = [i for i in self.mlp_only_layers if not 0 <= i < self.num_layers]
        if bad:
            problems.append(f"mlpOnlyLayers {bad} are outside 0..{self.num_layers - 1}")
        if not self.moe_layer_indices:
            problems.append("every layer is dense; a MoE model needs at least one MoE layer")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # ---- derived sizes -------------------------------------------------------------------------
    def is_moe_layer(self, layer: int) -> bool:
        """Whether decoder layer `layer` has routed experts (else a dense MLP)."""
        return layer >= self.first_k_dense_layers and layer not in self.mlp_only_layers

    @property
    def moe_layer_indices(self) -> list[int]:
        """Decoder layer index of each MoE layer, in order (MoE layer m is layer `[m]`)."""
        return [i for i in range(self.num_layers) if self.is_moe_layer(i)]

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layer_indices)

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def expert_params(self) -> int:
        """Parameters of one expert (gate, up and down projections)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def expert_bytes(self) -> float:
        """Bytes of one expert's weights in one layer."""
        return self.expert_params * self.weight_bytes_per_param

    @property
    def attention_params_per_layer(self) -> int:
        h, n = self.hidden_size, self.num_attention_heads
        if self.attention is AttentionKind.MLA:
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = h * self.q_lora_rank + self.q_lora_rank * n * qk if self.q_lora_rank else h * n * qk
            kv = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv += self.kv_lora_rank * n * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv + n * self.v_head_dim * h
        return h * n * self.head_dim * 2 + h * self.num_kv_heads * self.head_dim * 2

    @property
    def kv_elements_per_token_per_layer(self) -> int:
        """Cached elements per token per layer: the MLA latent + rope key, or K and V heads."""
        if self.attention is AttentionKind.MLA:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes per token over all layers (70,272 for DeepSeek-V3 in BF16)."""
        return self.kv_elements_per_token_per_layer * self.num_layers * self.kv_bytes_per_element

    @property
    def replicated_params(self) -> int:
        """Parameters every EP rank holds: attention, dense MLPs, routers, embeddings, lm_head.

        Shared experts are counted separately (see `shared_expert_params_total`).
        """
        attn = self.attention_params_per_layer * self.num_layers
        dense = 3 * self.hidden_size * self.dense_intermediate_size * self.num_dense_layers
        router = self.hidden_size * self.num_routed_experts * self.num_moe_layers
        embed = (1 if self.tie_word_embeddings else 2) * self.vocab_size * self.hidden_size
        return attn + dense + router + embed

    @property
    def shared_expert_params_total(self) -> int:
        return self.expert_params * self.num_shared_experts * self.num_moe_layers

    @property
    def total_params(self) -> int:
        routed = self.expert_params * self.num_routed_experts * self.num_moe_layers
        return routed + self.shared_expert_params_total + self.replicated_params

    @property
    def activated_params_per_token(self) -> int:
        routed = self.expert_params * self.num_experts_per_tok * self.num_moe_layers
        return routed + self.shared_expert_params_total + self.replicated_params
