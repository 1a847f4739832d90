"""DeepSeek-V3's multi-token-prediction (MTP) layer, loaded beside the main model and kept out of it.

A checkpoint with `num_nextn_predict_layers: 1` stores one extra layer at index `num_layers`
(`model.layers.61.*` for DeepSeek-V3): `enorm`, `hnorm`, `eh_proj`, a MoE decoder layer and
`shared_head.norm`. It shares the main model's embedding and LM head (the checkpoint's copies in
that layer are identical and are not read). The runner loads it when the checkpoint has it and
exposes it as `runner.mtp`; the main forward never runs it. `forward_hidden` is the draft step a
speculative decoder would call (as vLLM's DeepSeekMultiTokenPredictorLayer): with the main
model's final hidden state h_t at position t and the next token x_{t+1},
`eh_proj([enorm(embed(x_{t+1})), hnorm(h_t)])` runs through the decoder layer and
`shared_head.norm`; the main LM head then gives the logits for position t + 2.

Its routed experts are sharded like the main model's last MoE layer (the same slot layout), so
each rank reads only its own experts of this layer too.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from moeplane.api.arch import ModelArch
from moeplane.workers.ep.comm import EPComm
from moeplane.workers.ep.replicas import LayerPlacement
from moeplane.workers.model.layers import RMSNorm
from moeplane.workers.model.metadata import AttentionMetadata
from moeplane.workers.model.moe import MoEBlock
from moeplane.workers.model.transformer import DecoderLayer, MoETransformer, load_block_experts
from moeplane.workers.model.weights import WeightSource, check_shape
from torch import nn


class MTPLayer(nn.Module):
    """One MTP layer (module names are the checkpoint's, relative to `model.layers.{index}`)."""

    def __init__(self, arch: ModelArch, index: int, slots_per_rank: int) -> None:
        super().__init__()
        h = arch.hidden_size
        self.index = index
        self.enorm = RMSNorm(h, arch.rms_norm_eps)
        self.hnorm = RMSNorm(h, arch.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.block = DecoderLayer(arch, index, slots_per_rank)
        self.shared_head_norm = RMSNorm(h, arch.rms_norm_eps)

    def checkpoint_names(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(checkpoint name, parameter) for every parameter except the routed experts."""
        p = f"model.layers.{self.index}"
        for name, param in self.named_parameters():
            if ".experts." in name:
                continue
            if name.startswith("block."):
                yield f"{p}.{name.removeprefix('block.')}", param
            elif name.startswith("shared_head_norm."):
                yield f"{p}.shared_head.norm.{name.removeprefix('shared_head_norm.')}", param
            else:
                yield f"{p}.{name}", param

    def forward_hidden(
        self,
        main: MoETransformer,
        input_ids: torch.Tensor,
        previous_hidden: torch.Tensor,
        meta: AttentionMetadata,
        cache: torch.Tensor | None,
        placement: LayerPlacement,
        comm: EPComm,
    ) -> torch.Tensor:
        """input_ids [T] (the next tokens) and previous_hidden [T, hidden] (the main model's final
        hidden states at the same positions) -> [T, hidden], normed for the main LM head. Every
        rank of the group calls it (its MoE layer runs collectives)."""
        emb = main.model.embed_tokens(input_ids)
        emb = emb.masked_fill((meta.positions == 0).unsqueeze(-1), 0.0)  # as vLLM: no draft at 0
        h = self.eh_proj(torch.cat((self.enorm(emb), self.hnorm(previous_hidden)), dim=-1))
        h = h + self.block.self_attn(self.block.input_layernorm(h), meta, cache)
        x = self.block.post_attention_layernorm(h)
        mlp = self.block.mlp
        h = h + (mlp(x, placement, comm) if isinstance(mlp, MoEBlock) else mlp(x))
        return self.shared_head_norm(h)


def has_mtp_weights(arch: ModelArch, source: WeightSource) -> bool:
    """Whether `source` holds the MTP layers `arch` declares (a source that cannot tell: no)."""
    if not arch.num_nextn_predict_layers:
        return False
    contains = getattr(source, "__contains__", None)
    return contains is not None and f"model.layers.{arch.num_layers}.eh_proj.weight" in source  # type: ignore[operator]


def load_mtp_layers(
    arch: ModelArch, source: WeightSource, slots_per_rank: int, placement: LayerPlacement
) -> nn.ModuleList:
    """Build and load every MTP layer; routed experts per `placement` (this rank's slots only)."""
    layers = nn.ModuleList()
    with torch.no_grad():
        for k in range(arch.num_nextn_predict_layers):
            layer = MTPLayer(arch, arch.num_layers + k, slots_per_rank)
            for name, param in layer.checkpoint_names():
                param.copy_(check_shape(name, source.get(name), tuple(param.shape), source))
            if isinstance(layer.block.mlp, MoEBlock):
                load_block_experts(arch, layer.block.mlp, layer.index, source, placement)
            layers.append(layer)
    return layers
