"""`EPModelRunner`: one EP rank's model, as an ordinary in-process object.

A serving engine (prefill or decode) hosts one runner per rank, typically inside its own Ray
actor; the actor is a thin wrapper around it (vLLM v1 style). Every rank of the group must call
`forward` for every step, an idle rank with an empty batch (see `empty_metadata`), because each
MoE layer runs collectives across the whole group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from moeplane.api.arch import ModelArch
from moeplane.workers.ep.comm import EPComm
from moeplane.workers.ep.replicas import LayerPlacement
from moeplane.workers.model.metadata import AttentionMetadata, allocate_kv_cache, build_metadata
from moeplane.workers.model.profiling import PhaseTimer
from moeplane.workers.model.router import Router
from moeplane.workers.model.transformer import MoETransformer, load_local_experts, load_replicated
from moeplane.workers.model.weights import RandomWeights, WeightSource
from moeplane.workers.placement import Placement, PlacementError


def empty_metadata(device: torch.device | str = "cpu") -> AttentionMetadata:
    """Metadata of an idle rank's step: no sequences, no tokens."""
    return build_metadata([], block_size=0, device=device)


class EPModelRunner:
    """One rank of an EP group: replicated attention/dense weights, this rank's expert slots.

    Args:
        arch: the model architecture.
        weights: a `WeightSource` (safetensors, state dict) or an int seed for `RandomWeights`.
        placement: physical->logical expert maps for every MoE layer; default: identity with
            one slot per logical expert (the expert count must divide by the group size).
        comm: this rank's EP communicator; default: a one-rank group.
        device / dtype: where and in what precision the weights live.
    """

    def __init__(
        self,
        arch: ModelArch,
        weights: WeightSource | int,
        placement: Placement | None = None,
        comm: EPComm | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.arch = arch
        self.device = torch.device(device)
        self.dtype = dtype
        self.comm = comm if comm is not None else EPComm.single(self.device)
        self.source: WeightSource = RandomWeights(arch, weights) if isinstance(weights, int) else weights
        if placement is None:
            if arch.num_routed_experts % self.comm.world_size:
                raise PlacementError(
                    f"{arch.num_routed_experts} experts do not divide among {self.comm.world_size} "
                    "ranks; pass a placement with redundant slots"
                )
            placement = Placement.identity(arch.num_moe_layers, arch.num_routed_experts)
        self._check_placement(placement)
        self.placement = placement
        self.slots_per_rank = placement.slots_per_rank(self.comm.world_size)
        self.layer_placements = self._layer_placements(placement)
        model = MoETransformer(arch, self.slots_per_rank).to(dtype)
        for module in model.modules():
            if isinstance(module, Router):  # routing decisions stay in fp32, as in DeepSeek-V3
                module.float()
        load_replicated(model, self.source)
        load_local_experts(model, self.source, self.layer_placements)
        self.model = model.to(self.device).eval()
        self.expert_load = torch.zeros(
            arch.num_moe_layers, self.slots_per_rank, dtype=torch.int64, device=self.device
        )

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def world_size(self) -> int:
        return self.comm.world_size

    def _check_placement(self, placement: Placement) -> None:
        arch = self.arch
        if placement.num_layers != arch.num_moe_layers or placement.num_logical != arch.num_routed_experts:
            raise PlacementError(
                f"placement covers {placement.num_layers} layers x {placement.num_logical} experts; "
                f"{self.arch.name} has {self.arch.num_moe_layers} MoE layers x "
                f"{self.arch.num_routed_experts} experts"
            )
        placement.slots_per_rank(self.comm.world_size)

    def _layer_placements(self, placement: Placement) -> list[LayerPlacement]:
        return [
            LayerPlacement.of(placement, m, self.comm.rank, self.comm.world_size, self.device)
            for m in range(placement.num_layers)
        ]

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> list[torch.Tensor]:
        """One [num_blocks, block_size, kv_elems] tensor per layer, in the runner's dtype and device."""
        return allocate_kv_cache(self.arch, num_blocks, block_size, self.dtype, self.device)

    @torch.inference_mode()
    def forward_hidden(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: Sequence[torch.Tensor] | None = None,
        timer: PhaseTimer | None = None,
    ) -> torch.Tensor:
        """input_ids [T] int64 -> final-normed hidden states [T, hidden]; writes new KV into the cache."""
        return self.model.forward_hidden(
            input_ids.to(self.device), meta, kv_cache, self.layer_placements, self.comm,
            timer, self.expert_load,
        )

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: Sequence[torch.Tensor] | None = None,
        timer: PhaseTimer | None = None,
    ) -> torch.Tensor:
        """input_ids [T] int64 -> fp32 logits [N, vocab] of the tokens at `meta.logits_indices`."""
        hidden = self.forward_hidden(input_ids, meta, kv_cache, timer)
        return self.model.logits(hidden[meta.logits_indices])

    def take_expert_load(self) -> torch.Tensor:
        """Rows computed per local slot per MoE layer since the last call: [num_moe_layers, S] int64."""
        load = self.expert_load.clone()
        self.expert_load.zero_()
        return load

    def set_placement(self, placement: Placement) -> None:
        """Switch to a new placement between steps, reloading this rank's expert slots.

        Every rank of the group must switch before the next step (EPLB publishes versions).
        """
        self._check_placement(placement)
        if placement.slots_per_rank(self.comm.world_size) != self.slots_per_rank:
            raise PlacementError(
                f"new placement has {placement.slots_per_rank(self.comm.world_size)} slots per rank, "
                f"this runner was built with {self.slots_per_rank}"
            )
        layer_placements = self._layer_placements(placement)
        load_local_experts(self.model, self.source, layer_placements)
        self.placement, self.layer_placements = placement, layer_placements
