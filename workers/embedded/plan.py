"""What the embedded stack runs, derived from a MoEDeployment (pure: no Ray, no sockets).

`plan_from_deployment` turns the user's manifest (examples/tiny-cpu.yaml by default) into the
groups to start on this machine: per pool, its EP size, how many groups, and each rank's engine
configuration (KV blocks sized from `minKvTokensPerGpu`, since a CPU has no HBM figure to divide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from moeplane.api.arch import ModelArch
from moeplane.api.enums import Role, WeightsFormat
from moeplane.api.keys import DeploymentKeys
from moeplane.api.spec import MoEDeployment, PoolSpec, SlaSpec, parse_deployment
from moeplane.workers.serving.config import SchedulerConfig

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "tiny-cpu.yaml"
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


def _pool(role: Role, spec: PoolSpec, groups: int | None) -> PoolPlan:
    num_groups = spec.replicas if groups is None else groups
    if spec.attention_dp_size != spec.expert_parallel:
        raise EmbeddedPlanError(
            f"spec.{role}.dataParallelAttention ({spec.attention_dp_size}) must equal expertParallel "
            f"({spec.expert_parallel}) in the embedded stack: its ranks run data-parallel attention only"
        )
    blocks = max(1, math.ceil(spec.min_kv_tokens_per_gpu / BLOCK_SIZE_TOKENS))
    return PoolPlan(role, spec.expert_parallel, num_groups, blocks, BLOCK_SIZE_TOKENS)


def plan_from_deployment(
    dep: MoEDeployment,
    prefill_groups: int | None = None,
    decode_groups: int | None = None,
    max_model_len: int | None = None,
) -> EmbeddedPlan:
    """The embedded plan; group counts default to each pool's `replicas` (0 prefill = aggregated)."""
    spec = dep.spec
    if spec.model.weights.format is not WeightsFormat.RANDOM:
        raise EmbeddedPlanError(
            f"spec.model.weights.format is {spec.model.weights.format}; the embedded stack runs the "
            "seeded random weights (format: random) of a model small enough for a CPU"
        )
    arch = spec.model.resolve_arch()
    name = dep.metadata.name or arch.name
    decode = _pool(Role.DECODE, spec.decode, decode_groups)
    if decode.num_groups < 1:
        raise EmbeddedPlanError("the embedded stack needs at least one decode group (spec.decode.replicas)")
    length = max_model_len or arch.max_position_embeddings
    return EmbeddedPlan(
        keys=DeploymentKeys(dep.metadata.namespace or "default", name),
        served_model=spec.model.served_model_name or name,
        arch=arch,
        weights_seed=spec.model.weights.seed,
        prefill=_pool(Role.PREFILL, spec.prefill, prefill_groups),
        decode=decode,
        scheduler=SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=64, max_model_len=length),
        sla=spec.sla,
        kv_chunk_bytes=spec.kv_transfer.chunk_bytes,
        lease_s=spec.kv_transfer.lease_seconds,
    )
