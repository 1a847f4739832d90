"""What the embedded stack runs, derived from a MoEDeployment (pure: no Ray, no sockets).

`plan_from_deployment` turns the user's manifest (examples/tiny-cpu.yaml by default) into the
groups to start on this machine: per pool, its EP size, how many groups, and each rank's engine
configuration (KV blocks sized from `minKvTokensPerGpu`, since a CPU has no HBM figure to divide).
Each pool starts on the placement `spec.eplb` asks for: expert e on slot e, with the pool's
`redundantExperts` extra slots (modes off and online), or the placement of `loadFile` (static).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from moeplane.api.arch import ModelArch
from moeplane.api.enums import EplbAlgorithm, EplbMode, Role, WeightsFormat
from moeplane.api.spec import EplbSpec, MoEDeployment, PoolSpec, SlaSpec, parse_deployment
from moeplane.workers.embedded.defaults import DEFAULT_MANIFEST as DEFAULT_MANIFEST
from moeplane.workers.eplb.static import model_static_placement
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement
from moeplane.workers.serving.config import SchedulerConfig

from moeplane.bus.keys import DeploymentKeys

BLOCK_SIZE_TOKENS = 16


class EmbeddedPlanError(ValueError):
    """A manifest the embedded stack cannot run on this machine (the message says which field)."""


@dataclass(frozen=True)
class PoolPlan:
    role: Role
    ep_size: int
    num_groups: int
    num_blocks_per_rank: int
    block_size_tokens: int
    redundant_experts: int = 0
    placement: Placement | None = field(default=None, compare=False)  # None: no groups to place
    min_groups: int = 0  # spec.{role}.minReplicas: the planner's bounds for scale_pool
    max_groups: int = 0  # spec.{role}.maxReplicas, or num_groups when unset

    @property
    def num_ranks(self) -> int:
        return self.ep_size * self.num_groups


@dataclass(frozen=True)
class EmbeddedPlan:
    keys: DeploymentKeys
    served_model: str
    arch: ModelArch
    weights_seed: int
    prefill: PoolPlan  # num_groups 0: aggregated serving, decode groups compute prompts
    decode: PoolPlan
    scheduler: SchedulerConfig
    sla: SlaSpec
    kv_chunk_bytes: int
    lease_s: float
    eplb: EplbSpec = field(default_factory=EplbSpec)

    @property
    def max_model_len(self) -> int:
        return self.scheduler.max_model_len

    def pool(self, role: Role) -> PoolPlan:
        return self.prefill if role is Role.PREFILL else self.decode


def load_manifest(path: Path) -> MoEDeployment:
    """Read and validate a MoEDeployment YAML (SpecInvalid lists every problem)."""
    try:
        obj = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise EmbeddedPlanError(f"cannot read manifest {path}: {exc}") from None
    return parse_deployment(obj)


def _pool(
    role: Role, spec: PoolSpec, groups: int | None, arch: ModelArch, eplb: EplbSpec, base_dir: Path | None
) -> PoolPlan:
    num_groups = spec.replicas if groups is None else groups
    if spec.attention_dp_size != spec.expert_parallel:
        raise EmbeddedPlanError(
            f"spec.{role}.dataParallelAttention ({spec.attention_dp_size}) must equal expertParallel "
            f"({spec.expert_parallel}) in the embedded stack: its ranks run data-parallel attention only"
        )
    blocks = max(1, math.ceil(spec.min_kv_tokens_per_gpu / BLOCK_SIZE_TOKENS))
    placement = (
        initial_placement(arch, spec.expert_parallel, spec.redundant_experts, eplb, base_dir, role)
        if num_groups
        else None
    )
    max_groups = spec.max_replicas if spec.max_replicas is not None else num_groups
    return PoolPlan(
        role, spec.expert_parallel, num_groups, blocks, BLOCK_SIZE_TOKENS, spec.redundant_experts, placement,
        min_groups=spec.min_replicas, max_groups=max(max_groups, num_groups),
    )


def initial_placement(
    arch: ModelArch,
    ep_size: int,
    redundant_experts: int,
    eplb: EplbSpec,
    base_dir: Path | None = None,
    role: Role = Role.DECODE,
) -> Placement:
    """Version 0 of a pool's placement over `experts + redundant_experts` slots per MoE layer.

    Static mode reads `eplb.loadFile` (relative paths from `base_dir`, the manifest's folder) and
    places it with `eplb.algorithm` on one node of `ep_size` ranks; off and online start from
    expert e on slot e (the extra slots replicate the lowest ids until the first rebalance).
    """
    num_physical = arch.num_routed_experts + redundant_experts
    if num_physical % ep_size:
        raise EmbeddedPlanError(
            f"spec.{role}: {arch.num_routed_experts} routed + {redundant_experts} redundant experts = "
            f"{num_physical} slots do not divide among expertParallel {ep_size} ranks"
        )
    if EplbMode(eplb.mode) is not EplbMode.STATIC:
        return Placement.identity(arch.num_moe_layers, arch.num_routed_experts, num_physical)
    if eplb.load_file is None:
        raise EmbeddedPlanError("spec.eplb.loadFile is required when spec.eplb.mode is static")
    if eplb.load_configmap is not None:
        raise EmbeddedPlanError(
            f"spec.eplb.loadFile: {eplb.load_file} names a Kubernetes ConfigMap, and the embedded stack "
            "runs without a cluster; give the load file's path (relative to the manifest) instead"
        )
    path = Path(eplb.load_file)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        # The embedded stack runs every rank of a group on this one machine: one node.
        return model_static_placement(path, arch, num_physical, 1, ep_size, EplbAlgorithm(eplb.algorithm))
    except EplbError as exc:
        raise EmbeddedPlanError(f"spec.eplb.loadFile: {exc}") from None


def plan_from_deployment(
    dep: MoEDeployment,
    prefill_groups: int | None = None,
    decode_groups: int | None = None,
    max_model_len: int | None = None,
    manifest_dir: Path | None = None,
) -> EmbeddedPlan:
    """The embedded plan; group counts default to each pool's `replicas` (0 prefill = aggregated).

    `manifest_dir` resolves a relative `spec.eplb.loadFile` (default: the working directory)."""
    spec = dep.spec
    if spec.model.weights.format is not WeightsFormat.RANDOM:
        raise EmbeddedPlanError(
            f"spec.model.weights.format is {spec.model.weights.format}; the embedded stack runs the "
            "seeded random weights (format: random) of a model small enough for a CPU"
        )
    arch = spec.model.resolve_arch()
    name = dep.metadata.name or arch.name
    decode = _pool(Role.DECODE, spec.decode, decode_groups, arch, spec.eplb, manifest_dir)
    if decode.num_groups < 1:
        raise EmbeddedPlanError("the embedded stack needs at least one decode group (spec.decode.replicas)")
    length = max_model_len or arch.max_position_embeddings
    return EmbeddedPlan(
        keys=DeploymentKeys(dep.metadata.namespace or "default", name),
        served_model=spec.model.served_model_name or name,
        arch=arch,
        weights_seed=spec.model.weights.seed,
        prefill=_pool(Role.PREFILL, spec.prefill, prefill_groups, arch, spec.eplb, manifest_dir),
        decode=decode,
        scheduler=SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=64, max_model_len=length),
        sla=spec.sla,
        kv_chunk_bytes=spec.kv_transfer.chunk_bytes,
        lease_s=spec.kv_transfer.lease_seconds,
        eplb=spec.eplb,
    )
