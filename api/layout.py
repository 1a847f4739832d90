"""The resolved layout of each pool: nodes, GPUs, experts, weight bytes and KV capacity per GPU.

Pure arithmetic over the architecture, the GPU preset and the pool spec; the operator builds
RayClusters from it, the planner sizes pools with it and `moeplane plan` prints it. Call it on a
spec that passed validation: it never raises, and where a rule is broken (slots not divisible
by EP) it rounds up, which `validation.py` reports.

Memory model per GPU (data-parallel attention, experts sharded):
    routed experts per GPU × expert bytes × MoE layers
  + shared experts × expert bytes × MoE layers          (every GPU holds the shared experts)
  + attention weights / attention TP                   (replicated across DP ranks)
  + dense MLPs, routers, embeddings and lm_head        (replicated)
The KV cache gets `hbm × gpuMemoryUtilization − weights`, except on the `cpu` preset: its memory
figure is a nominal share of host memory that nothing reserves, so a CPU rank holds the KV cache it
is asked for, `minKvTokensPerGpu` tokens.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from moeplane.api.arch import AttentionKind, ModelArch
from moeplane.api.base import ApiModel
from moeplane.api.enums import Role
from moeplane.api.hardware import HardwarePreset, HardwareSpec
from pydantic import Field

if TYPE_CHECKING:  # spec.py imports GroupLayout from here; the spec is only needed for typing.
    from moeplane.api.spec import MoEDeploymentSpec, PoolSpec


class GroupLayout(ApiModel):
    """The shape of one EP group of a pool (independent of how many groups run)."""

    role: Role = Field(description="prefill or decode.")
    gpu: HardwarePreset = Field(description="GPU preset of every rank (cpu: a CPU share per rank).")
    expert_parallel: int = Field(gt=0, description="GPUs per EP group.")
    attention_dp_size: int = Field(gt=0, description="Attention data-parallel ranks per group.")
    attention_tp_size: int = Field(gt=0, description="Attention tensor-parallel size within a DP rank.")
    gpus_per_node: int = Field(gt=0, description="GPUs per node.")
    nodes_per_group: int = Field(gt=0, description="Nodes (hosts) per EP group.")
    gpus_per_group: int = Field(gt=0, description="GPUs per EP group.")
    expert_slots: int = Field(gt=0, description="Physical expert slots per MoE layer in a group.")
    routed_experts_per_gpu: int = Field(ge=0, description="Routed expert slots per GPU per MoE layer.")
    shared_experts_per_gpu: int = Field(ge=0, description="Shared experts per GPU per MoE layer.")
    weight_bytes_per_gpu: int = Field(ge=0, description="Weight bytes per GPU, all layers.")
    expert_weight_bytes_per_gpu: int = Field(
        ge=0, description="Of which routed and shared experts."
    )
    usable_bytes_per_gpu: int = Field(ge=0, description="GPU memory × gpuMemoryUtilization.")
    kv_bytes_per_token_per_gpu: int = Field(ge=0, description="KV-cache bytes per token on one GPU.")
    kv_tokens_per_gpu: int = Field(ge=0, description="KV-cache tokens that fit on one GPU.")
    kv_tokens_per_group: int = Field(ge=0, description="KV-cache tokens of a whole EP group.")

    @property
    def kv_bytes_per_gpu(self) -> int:
        return max(0, self.usable_bytes_per_gpu - self.weight_bytes_per_gpu)

    def with_groups(self, groups: int) -> PoolLayout:
        """This group shape run `groups` times."""
        return PoolLayout(
            **self.model_dump(),
            groups=groups,
            total_gpus=groups * self.gpus_per_group,
            total_nodes=groups * self.nodes_per_group,
        )


class PoolLayout(GroupLayout):
    """A pool: its group shape and how many groups run."""

    groups: int = Field(ge=0, description="EP groups (the pool's replicas).")
    total_gpus: int = Field(ge=0, description="GPUs of all groups.")
    total_nodes: int = Field(
        ge=0, description="Nodes of all groups (groups smaller than a node count one node each)."
    )

    @property
    def group(self) -> GroupLayout:
        return GroupLayout(**self.model_dump(include=set(GroupLayout.model_fields)))


class DeploymentLayout(ApiModel):
    """Both pools of a deployment."""

    model: str = Field(description="Architecture name.")
    gpu: str = Field(description="GPU preset name.")
    kv_bytes_per_token: int = Field(ge=0, description="KV-cache bytes per token, all layers.")
    prefill: PoolLayout
    decode: PoolLayout

    @property
    def total_gpus(self) -> int:
        return self.prefill.total_gpus + self.decode.total_gpus

    @property
    def total_nodes(self) -> int:
        return self.prefill.total_nodes + self.decode.total_nodes

    def pool(self, role: Role) -> PoolLayout:
        return self.prefill if role is Role.PREFILL else self.decode


def kv_bytes_per_token_per_gpu(arch: ModelArch, attention_tp_size: int) -> int:
    """KV bytes one GPU stores per token: MLA's latent is replicated over attention TP, GQA's KV
    heads are split over it (a GPU holds at least one head)."""
    if arch.attention is AttentionKind.MLA or arch.num_kv_heads == 0:
        return math.ceil(arch.kv_bytes_per_token)
    heads_per_gpu = max(1, math.ceil(arch.num_kv_heads / attention_tp_size))
    return math.ceil(arch.kv_bytes_per_token * heads_per_gpu / arch.num_kv_heads)


def resolve_group(arch: ModelArch, hw: HardwareSpec, pool: PoolSpec, role: Role) -> GroupLayout:
    """The shape of one EP group of `pool` on `hw` serving `arch`."""
    ep = pool.expert_parallel
    gpn = hw.gpus_per_node
    dp = pool.attention_dp_size
    tp = max(1, math.ceil(ep / dp))
    slots = arch.num_routed_experts + pool.redundant_experts
    routed_per_gpu = math.ceil(slots / ep)
    shared_per_gpu = arch.num_shared_experts
    moe_layers = arch.num_moe_layers
    expert_bytes = (routed_per_gpu + shared_per_gpu) * arch.expert_bytes * moe_layers
    attention_params = arch.attention_params_per_layer * arch.num_layers
    replicated_bytes = (
        attention_params / tp + (arch.replicated_params - attention_params)
    ) * arch.weight_bytes_per_param
    weight_bytes = math.ceil(expert_bytes + replicated_bytes)
    usable = math.floor(hw.hbm_bytes * pool.gpu_memory_utilization)
    kv_per_token = kv_bytes_per_token_per_gpu(arch, tp)
    gpu = HardwarePreset(hw.name)
    if gpu is HardwarePreset.CPU:
        kv_tokens = pool.min_kv_tokens_per_gpu
    else:
        kv_tokens = max(0, usable - weight_bytes) // kv_per_token if kv_per_token else 0
    return GroupLayout(
        role=role,
        gpu=gpu,
        expert_parallel=ep,
        attention_dp_size=dp,
        attention_tp_size=tp,
        gpus_per_node=gpn,
        nodes_per_group=math.ceil(ep / gpn),
        gpus_per_group=ep,
        expert_slots=slots,
        routed_experts_per_gpu=routed_per_gpu,
        shared_experts_per_gpu=shared_per_gpu,
        weight_bytes_per_gpu=weight_bytes,
        expert_weight_bytes_per_gpu=math.ceil(expert_bytes),
        usable_bytes_per_gpu=usable,
        kv_bytes_per_token_per_gpu=kv_per_token,
        kv_tokens_per_gpu=kv_tokens,
        kv_tokens_per_group=kv_tokens * dp,
    )


def resolve_pool(arch: ModelArch, hw: HardwareSpec, pool: PoolSpec, role: Role) -> PoolLayout:
    return resolve_group(arch, hw, pool, role).with_groups(pool.replicas)


def resolve_layout(spec: MoEDeploymentSpec) -> DeploymentLayout:
    """Both pools' layouts. Raises ValueError only when the model is not resolvable (neither or
    both of preset/architecture), which validation reports first."""
    arch = spec.model.resolve_arch()
    hw = spec.hardware.figures()
    return DeploymentLayout(
        model=arch.name,
        gpu=hw.name,
        kv_bytes_per_token=math.ceil(arch.kv_bytes_per_token),
        prefill=resolve_pool(arch, hw, spec.prefill, Role.PREFILL),
        decode=resolve_pool(arch, hw, spec.decode, Role.DECODE),
    )
