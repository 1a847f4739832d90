"""`EPModelRunner`: one EP rank's model, as an ordinary in-process object.

A serving engine (prefill or decode) hosts one runner per rank, typically inside its own Ray
actor; the actor is a thin wrapper around it (vLLM v1 style). Every rank of the group must call
`forward` for every step, an idle rank with an empty batch (see `empty_metadata`), because each
MoE layer runs collectives across the whole group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from moeplane.api.arch import ModelArch
from moeplane.workers.ep.comm import EPComm
from moeplane.workers.ep.replicas import LayerPlacement
from moeplane.workers.eplb.counter import ExpertLoadCounter, LoadWindow
from moeplane.workers.eplb.mover import commit_step, stage_step
from moeplane.workers.eplb.moves import MovePlan, plan_moves
from moeplane.workers.model.fp8 import fp8_gemm_available, swap_in_fp8_linears
from moeplane.workers.model.metadata import AttentionMetadata, allocate_kv_cache, build_metadata
from moeplane.workers.model.moe import MoEBlock
from moeplane.workers.model.mtp import has_mtp_weights, load_mtp_layers
from moeplane.workers.model.profiling import PhaseTimer
from moeplane.workers.model.router import Router
from moeplane.workers.model.transformer import MoETransformer, load_local_experts, load_replicated
from moeplane.workers.model.weights import RandomWeights, WeightSource
from moeplane.workers.placement import Placement, PlacementError
from torch import nn


def empty_metadata(device: torch.device | str = "cpu") -> AttentionMetadata:
    """Metadata of an idle rank's step: no sequences, no tokens."""
    return build_metadata([], block_size=0, device=device)


class PlacementSwitchError(PlacementError):
    """The ranks of a group disagree on a placement switch (different targets or batches)."""


@dataclass
class _Switch:
    """A move to `target` in progress: `plan.steps[next_step:]` are still to do."""

    target: Placement
    plan: MovePlan
    next_step: int = 0


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
        check_arch = getattr(self.source, "check_arch", None)
        if check_arch is not None:  # a checkpoint with a config.json: refuse another model's
            check_arch(arch)
        model = MoETransformer(arch, self.slots_per_rank).to(dtype)
        for module in model.modules():
            if isinstance(module, Router):  # routing decisions stay in fp32, as in DeepSeek-V3
                module.float()
        load_replicated(model, self.source)
        load_local_experts(model, self.source, self.layer_placements)
        self.model = model.to(self.device).eval()
        self.num_fp8_linears = self._keep_fp8(self.model)
        # DeepSeek-V3's MTP layer, when the checkpoint has it: loaded, never run by `forward`.
        self.mtp: nn.ModuleList | None = None
        self.mtp_placement: LayerPlacement | None = None
        if has_mtp_weights(arch, self.source):
            self.mtp_placement = self.layer_placements[-1]
            mtp = load_mtp_layers(arch, self.source, self.slots_per_rank, self.mtp_placement).to(dtype)
            for module in mtp.modules():
                if isinstance(module, Router):
                    module.float()
            self.mtp = mtp.to(self.device).eval()
            self._keep_fp8(self.mtp)
        self.expert_load = torch.zeros(
            arch.num_moe_layers, self.slots_per_rank, dtype=torch.int64, device=self.device
        )
        self.load_counter: ExpertLoadCounter | None = None
        self._switch: _Switch | None = None

    def _keep_fp8(self, module: nn.Module) -> int:
        """On a GPU with block-scaled FP8 GEMMs, swap the linears the checkpoint stores in FP8 for
        `Fp8Linear`s (routed experts stay dequantised: the grouped GEMM is not FP8)."""
        fp8_weight = getattr(self.source, "fp8_weight", None)
        if fp8_weight is None or not fp8_gemm_available(str(self.device)):
            return 0
        names = [f"{n}.weight" for n, m in module.named_modules() if isinstance(m, nn.Linear)]
        found = {n: pair for n in names if (pair := fp8_weight(self._stored_name(module, n))) is not None}
        return swap_in_fp8_linears(module, found)

    def _stored_name(self, module: nn.Module, name: str) -> str:
        if isinstance(module, MoETransformer):
            return name
        index, _, rest = name.partition(".")  # an MTP ModuleList: "0.block.self_attn.o_proj.weight"
        layer = self.arch.num_layers + int(index)
        return f"model.layers.{layer}.{rest.removeprefix('block.')}"

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
        hidden = self.model.forward_hidden(
            input_ids.to(self.device), meta, kv_cache, self.layer_placements, self.comm,
            timer, self.expert_load, self.load_counter,
        )
        if self.load_counter is not None:
            self.load_counter.end_step()
        return hidden

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

    @torch.inference_mode()
    def forward_mtp(
        self,
        input_ids: torch.Tensor,
        previous_hidden: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: torch.Tensor | None = None,
        depth: int = 0,
    ) -> torch.Tensor:
        """The MTP draft step (never part of `forward`): the next tokens [T] and the main model's
        final hidden states [T, hidden] at the same positions -> fp32 draft logits
        [N, vocab] at `meta.logits_indices`. `kv_cache` is the MTP layer's own cache tensor.
        Every rank calls it together (its MoE layer runs collectives)."""
        if self.mtp is None or self.mtp_placement is None:
            raise RuntimeError(f"{self.arch.name}: the checkpoint has no MTP layer")
        layer = self.mtp[depth]
        hidden = layer.forward_hidden(  # type: ignore[operator]
            self.model, input_ids.to(self.device), previous_hidden, meta, kv_cache, self.mtp_placement,
            self.comm,
        )
        return self.model.logits(hidden[meta.logits_indices])

    def take_expert_load(self) -> torch.Tensor:
        """Rows computed per local slot per MoE layer since the last call: [num_moe_layers, S] int64."""
        load = self.expert_load.clone()
        self.expert_load.zero_()
        return load

    def set_placement(self, placement: Placement) -> None:
        """Switch to a new placement between steps, reloading this rank's expert slots from the
        weight source (a move in progress is dropped). Every rank of the group must switch before
        the next step; `begin_placement` moves weights between ranks instead.
        """
        self._check_slots(placement)
        layer_placements = self._layer_placements(placement)
        load_local_experts(self.model, self.source, layer_placements)
        self.placement, self.layer_placements = placement, layer_placements
        self._switch = None
        if self.load_counter is not None:
            self.load_counter.switch_placement(placement)

    def _check_slots(self, placement: Placement) -> None:
        self._check_placement(placement)
        if placement.slots_per_rank(self.comm.world_size) != self.slots_per_rank:
            raise PlacementError(
                f"new placement has {placement.slots_per_rank(self.comm.world_size)} slots per rank, "
                f"this runner was built with {self.slots_per_rank}"
            )

    # ---- online EPLB: counting and moving experts between forward passes -----------------------
    def enable_load_counting(self, num_buckets: int = 8, bucket_s: float | None = None) -> None:
        """Count this rank's routed tokens per (MoE layer, physical slot) on every forward pass,
        over a sliding window of `num_buckets` buckets of `bucket_s` seconds (default: 16 steps)."""
        self.load_counter = ExpertLoadCounter(
            self.rank, self.placement, num_buckets=num_buckets, device=self.device, bucket_s=bucket_s
        )

    def load_window(self) -> LoadWindow | None:
        """This rank's counts over its window (host copies), or None when counting is off."""
        return None if self.load_counter is None else self.load_counter.window()

    @property
    def placement_version(self) -> int:
        """The version every layer runs on; during a move, the version being left."""
        return self.placement.version

    @property
    def is_moving(self) -> bool:
        return self._switch is not None

    def begin_placement(self, target: Placement, layers_per_step: int = 1) -> None:
        """Start moving to `target`: `advance_placement` then moves `layers_per_step` layers per
        call, from the maps in force now (a move in progress is re-planned from where it is)."""
        self._check_slots(target)
        plan = plan_moves(self.placement, target, self.world_size, layers_per_step)
        self._switch = _Switch(target, plan)
        if not plan.steps:  # nothing moves: only the version changes
            self._finish_switch(self._switch)

    def advance_placement(self) -> bool:
        """Move and switch the next batch of layers; True once the target is fully in force.

        Every rank of the group calls it between the same two forward passes (they agree first:
        one all-reduce fails loudly if any rank is on another target or batch). Weights are
        staged from the live ones, exchanged, then committed together with the layers' maps, so
        the next forward pass sees either all old or all new state for each layer.
        """
        switch = self._switch
        if switch is None:
            return True
        self._agree(switch)
        step = switch.plan.steps[switch.next_step]
        weights = self._expert_weights()
        with torch.no_grad():
            staged = stage_step(step, self.rank, weights, self.slots_per_rank, self.comm.group)
            self.comm.barrier()  # every rank has staged the batch: all switch on this step
            commit_step(staged, weights)
        phy2log = self.placement.phy2log.clone()
        for layer in step.layers:
            phy2log[layer] = switch.target.phy2log[layer]
            self.layer_placements[layer] = LayerPlacement.of(
                switch.target, layer, self.rank, self.world_size, self.device
            )
        switch.next_step += 1
        if switch.next_step == len(switch.plan.steps):
            self._finish_switch(switch)
            return True
        self.placement = Placement.from_phy2log(phy2log, self.placement.num_logical, self.placement.version)
        if self.load_counter is not None:
            self.load_counter.switch_placement(switch.target, step.layers)
        return False

    def _finish_switch(self, switch: _Switch) -> None:
        self.placement = switch.target
        self.layer_placements = self._layer_placements(switch.target)
        self._switch = None
        if self.load_counter is not None:
            self.load_counter.switch_placement(switch.target)

    def _agree(self, switch: _Switch) -> None:
        if self.world_size == 1:
            return
        mine = [switch.target.version, switch.plan.from_version, switch.next_step]
        both = torch.tensor(mine + [-x for x in mine], dtype=torch.int64, device=self.comm.device)
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.comm.group)
        high, low = both[:3].tolist(), [-x for x in both[3:].tolist()]
        if high != low:
            raise PlacementSwitchError(
                f"rank {self.rank} is at (target version, from version, batch) {tuple(mine)}, but the "
                f"group spans {tuple(low)} .. {tuple(high)}: ranks must get the same target on the same step"
            )

    def _expert_weights(self) -> dict[int, list[torch.Tensor]]:
        """MoE layer index -> [w13 [S, 2I, H], w2 [S, H, I]], the live local-slot weights."""
        blocks = [layer.mlp for layer in self.model.decoder_layers() if isinstance(layer.mlp, MoEBlock)]
        return {m: [block.experts.w13, block.experts.w2] for m, block in enumerate(blocks)}
