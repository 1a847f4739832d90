"""The validated engine configuration, passed down whole (nano-vllm style)."""

from __future__ import annotations

from dataclasses import dataclass, field

from moeplane.api.enums import Role
from moeplane.api.runtime import BLOCK_SIZE_TOKENS
from moeplane.api.spec import KvTransferSpec

__all__ = ["EngineConfig", "EngineConfigError", "Role", "SchedulerConfig"]


class EngineConfigError(ValueError):
    pass


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching limits of one DP rank.

    max_num_batched_tokens: tokens computed per step over all sequences (the token budget);
        prompts longer than it are prefilled in chunks over several steps.
    max_num_seqs: sequences running at once.
    max_prefill_chunk_tokens: cap on one sequence's chunk in a step, so a long prompt leaves
        budget for decode tokens of other sequences (0: no cap beyond the budget).
    reserve_blocks: free blocks admissions leave for running sequences to grow into.
    """

    max_num_batched_tokens: int = 512
    max_num_seqs: int = 64
    max_prefill_chunk_tokens: int = 0
    max_model_len: int = 2048
    reserve_blocks: int = 0

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs", "max_model_len"):
            if getattr(self, name) < 1:
                raise EngineConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_prefill_chunk_tokens < 0 or self.reserve_blocks < 0:
            raise EngineConfigError("max_prefill_chunk_tokens and reserve_blocks must be >= 0")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise EngineConfigError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}) so every running sequence can decode in one step"
            )


@dataclass(frozen=True)
class EngineConfig:
    """One rank's engine settings, the same for every rank of a group."""

    role: Role
    num_blocks: int
    block_size: int = BLOCK_SIZE_TOKENS
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    lease_s: float = KvTransferSpec.model_fields["lease_seconds"].default
    kv_pull_timeout_s: float = 60.0
    sampler_seed: int = 0
    # EPLB: count routed tokens per expert slot over this many seconds (None: no counting), in
    # `expert_load_buckets` buckets; a placement switch moves this many MoE layers per step.
    expert_load_window_s: float | None = None
    expert_load_buckets: int = 8
    move_layers_per_step: int = 1

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.block_size < 1:
            raise EngineConfigError(
                f"num_blocks ({self.num_blocks}) and block_size ({self.block_size}) must be >= 1"
            )
        if self.lease_s <= 0 or self.kv_pull_timeout_s <= 0:
            raise EngineConfigError("lease_s and kv_pull_timeout_s must be positive")
        if self.expert_load_window_s is not None and not self.expert_load_window_s > 0:
            raise EngineConfigError(f"expert_load_window_s must be > 0, got {self.expert_load_window_s}")
        if self.expert_load_buckets < 1 or self.move_layers_per_step < 1:
            raise EngineConfigError(
                f"expert_load_buckets ({self.expert_load_buckets}) and move_layers_per_step "
                f"({self.move_layers_per_step}) must be >= 1"
            )
