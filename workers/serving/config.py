"""The one validated engine configuration, passed down whole (nano-vllm style)."""

from __future__ import annotations

from dataclasses import dataclass

from moeplane.api.enums import Role

__all__ = ["EngineConfigError", "Role", "SchedulerConfig"]


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
