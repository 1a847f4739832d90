"""The DeepSeek-V3-architecture transformer as seen by one EP rank.

Module paths equal the Hugging Face tensor names (`model.layers.3.self_attn.kv_b_proj.weight`),
except that a rank's routed experts are stacked per local slot in `mlp.experts.w13` / `w2`.
Attention, dense MLPs, routers and shared experts are replicated; routed experts are sharded by
the placement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from moeplane.api.arch import ModelArch
from moeplane.workers.ep.comm import EPComm
from moeplane.workers.ep.replicas import LayerPlacement
from moeplane.workers.model.attention import GQAAttention, MLAAttention, make_attention
from moeplane.workers.model.layers import DenseMLP, RMSNorm
from moeplane.workers.model.metadata import AttentionMetadata, MetadataError
from moeplane.workers.model.moe import MoEBlock, SlotRecorder
from moeplane.workers.model.profiling import PhaseTimer, maybe_phase
from moeplane.workers.model.weights import WeightSource, check_shape, expert_weight_name
from torch import nn


class DecoderLayer(nn.Module):
    def __init__(self, arch: ModelArch, index: int, slots_per_rank: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.self_attn: MLAAttention | GQAAttention = make_attention(arch)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.is_moe = arch.is_moe_layer(index)
        self.mlp: MoEBlock | DenseMLP = (
            MoEBlock(arch, slots_per_rank) if self.is_moe
            else DenseMLP(arch.hidden_size, arch.dense_intermediate_size)
        )


class Backbone(nn.Module):
    def __init__(self, arch: ModelArch, slots_per_rank: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(arch, i, slots_per_rank) for i in range(arch.num_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)


class MoETransformer(nn.Module):
    """Embedding, first-k dense layers, MoE layers, final norm and LM head."""

    def __init__(self, arch: ModelArch, slots_per_rank: int) -> None:
        super().__init__()
        self.arch = arch
        self.model = Backbone(arch, slots_per_rank)
        self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        self.moe_index = {layer: m for m, layer in enumerate(arch.moe_layer_indices)}

    def decoder_layers(self) -> list[DecoderLayer]:
        return [cast(DecoderLayer, layer) for layer in self.model.layers]

    def forward_hidden(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: Sequence[torch.Tensor] | None,
        placements: Sequence[LayerPlacement],
        comm: EPComm,
        timer: PhaseTimer | None = None,
        expert_load: torch.Tensor | None = None,
        recorder: SlotRecorder | None = None,
    ) -> torch.Tensor:
        """input_ids [T] int64 -> final-normed hidden states [T, hidden].

        Args:
            kv_cache: one [num_blocks, block_size, kv_elems] tensor per layer, or None for a
                cache-less prefill.
            placements: one per MoE layer.
            expert_load: optional [num_moe_layers, S] int64, incremented by rows per local slot.
            recorder: optional; gets each MoE layer's physical slot choices (EPLB counting).
        """
        if input_ids.shape[0] != meta.num_tokens:
            raise MetadataError(f"{input_ids.shape[0]} input ids but metadata for {meta.num_tokens} tokens")
        if kv_cache is not None and len(kv_cache) != len(self.model.layers):
            raise MetadataError(f"kv_cache has {len(kv_cache)} layers, the model {len(self.model.layers)}")
        h = self.model.embed_tokens(input_ids)
        for i, layer in enumerate(self.decoder_layers()):
            with maybe_phase(timer, "attention"):
                cache = None if kv_cache is None else kv_cache[i]
                h = h + layer.self_attn(layer.input_layernorm(h), meta, cache)
                x = layer.post_attention_layernorm(h)
            if isinstance(layer.mlp, MoEBlock):
                m = self.moe_index[i]
                load = None if expert_load is None else expert_load[m]
                h = h + layer.mlp(x, placements[m], comm, timer, load, recorder, m)
            else:
                with maybe_phase(timer, "dense_mlp"):
                    h = h + layer.mlp(x)
        return self.model.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] in fp32."""
        return self.lm_head(hidden).float()


def load_replicated(model: MoETransformer, source: WeightSource) -> None:
    """Copy every tensor except the routed experts from `source` (shapes checked; each tensor
    takes its parameter's dtype and device). A tied LM head reads the embedding."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".mlp.experts." in name:
                continue
            stored = name
            if name == "lm_head.weight" and model.arch.tie_word_embeddings:
                stored = "model.embed_tokens.weight"
            param.copy_(check_shape(stored, source.get(stored), tuple(param.shape), source))


def load_local_experts(
    model: MoETransformer, source: WeightSource, placements: Sequence[LayerPlacement]
) -> None:
    """Fill each MoE layer's local slots with the experts the placement assigns to this rank.

    Only those experts' tensors are read from `source`.
    """
    for i, layer in enumerate(model.decoder_layers()):
        if isinstance(layer.mlp, MoEBlock):
            load_block_experts(model.arch, layer.mlp, i, source, placements[model.moe_index[i]])


def load_block_experts(
    arch: ModelArch, block: MoEBlock, layer: int, source: WeightSource, placement: LayerPlacement
) -> None:
    """Fill one MoE block's local slots with decoder layer `layer`'s experts per `placement`."""
    inter, hidden = arch.moe_intermediate_size, arch.hidden_size
    experts = block.experts
    with torch.no_grad():
        for slot, e in enumerate(placement.local_experts.tolist()):
            gate, up, down = (
                check_shape(n := expert_weight_name(layer, e, proj), source.get(n), shape, source)
                for proj, shape in (("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)),
                                    ("down_proj", (hidden, inter)))
            )
            experts.w13[slot].copy_(torch.cat((gate, up), 0))
            experts.w2[slot].copy_(down)
