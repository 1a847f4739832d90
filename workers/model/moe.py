"""The MoE block: router, dispatch to the experts' ranks, grouped experts, combine, shared experts."""

from __future__ import annotations

from typing import Protocol

import torch
from moeplane.api.arch import ModelArch
from moeplane.workers.ep.comm import EPComm
from moeplane.workers.ep.dispatch import combine, dispatch, expert_inputs, reduce_expert_outputs
from moeplane.workers.ep.grouped_gemm import GroupedExperts
from moeplane.workers.ep.replicas import LayerPlacement
from moeplane.workers.model.layers import DenseMLP
from moeplane.workers.model.profiling import PhaseTimer, maybe_phase
from moeplane.workers.model.router import Router
from torch import nn


class SlotRecorder(Protocol):
    """Takes each MoE layer's physical slot choices (EPLB's `ExpertLoadCounter` is one)."""

    def record(self, layer: int, slots: torch.Tensor) -> None: ...


class MoEBlock(nn.Module):
    """Hugging Face names: `gate`, `shared_experts`; the local routed experts are `experts.w13/w2`.

    The shared experts are one SwiGLU MLP of width `moe_intermediate_size * num_shared_experts`
    (as in DeepSeek-V3's checkpoints), held by every rank.
    """

    def __init__(self, arch: ModelArch, slots_per_rank: int) -> None:
        super().__init__()
        self.gate = Router(arch)
        self.experts = GroupedExperts(slots_per_rank, arch.hidden_size, arch.moe_intermediate_size)
        self.shared_experts: DenseMLP | None = None
        if arch.num_shared_experts:
            self.shared_experts = DenseMLP(
                arch.hidden_size, arch.moe_intermediate_size * arch.num_shared_experts
            )

    def forward(
        self,
        x: torch.Tensor,
        placement: LayerPlacement,
        comm: EPComm,
        timer: PhaseTimer | None = None,
        slot_load: torch.Tensor | None = None,
        recorder: SlotRecorder | None = None,
        moe_layer: int = 0,
    ) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]. Every rank calls this, with T = 0 when idle.

        `slot_load` ([S] int64), when given, accumulates the rows each local slot computed.
        `recorder`, when given, gets this rank's tokens' physical slots ([T, K] int64, on the
        device) as MoE layer `moe_layer`.
        """
        with maybe_phase(timer, "router"):
            topk_ids, topk_weights = self.gate(x)
        with maybe_phase(timer, "dispatch"):
            handle = dispatch(x, topk_ids, topk_weights, placement, comm)
        with maybe_phase(timer, "experts"):  # permute, grouped GEMM, weighted local sum
            expert_out = self.experts(expert_inputs(handle), handle.tokens_per_slot)
            expert_out = reduce_expert_outputs(expert_out, handle)
        with maybe_phase(timer, "combine"):
            out = combine(expert_out, handle)
        if slot_load is not None:
            slot_load += handle.tokens_per_slot
        if recorder is not None:
            recorder.record(moe_layer, handle.phys_ids)
        if self.shared_experts is not None:
            with maybe_phase(timer, "shared_experts"):
                out = out + self.shared_experts(x)
        return out
