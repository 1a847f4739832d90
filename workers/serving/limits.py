"""`ServingLimits`: a deployment's serving limits (`spec.serving`), one object for the ranks and the
frontend. The runtime document's fields map one to one: maxNumBatchedTokens, maxNumSeqs,
maxModelLen (per DP rank: the scheduler), maxQueuedRequests, queueTimeoutSeconds and the request
timeout (the frontend's admission queue and request deadline). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeplane.workers.serving.config import EngineConfigError, SchedulerConfig


@dataclass(frozen=True)
class ServingLimits:
    """max_num_batched_tokens / max_num_seqs / max_model_len: one DP rank's batching limits.
    max_queued_requests: requests one frontend holds waiting for capacity (new ones past it: 503
        with Retry-After). Streams resuming after a group failure wait at the head and do not count.
    queue_timeout_s: the longest a new request waits in that queue (then 503 with Retry-After).
    request_timeout_s: a request's whole life, its waits included (then 504, or an error event on a
        stream that already started)."""

    max_num_batched_tokens: int = 512
    max_num_seqs: int = 64
    max_model_len: int = 2048
    max_queued_requests: int = 1024
    queue_timeout_s: float = 120.0
    request_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_queued_requests < 0:
            raise EngineConfigError(f"max_queued_requests must be >= 0, got {self.max_queued_requests}")
        if not 0 < self.queue_timeout_s <= self.request_timeout_s:
            raise EngineConfigError(
                f"queue_timeout_s ({self.queue_timeout_s}) must be in (0, request_timeout_s="
                f"{self.request_timeout_s}]"
            )
        self.scheduler()  # the rank limits' own checks

    def scheduler(self, reserve_blocks: int = 0) -> SchedulerConfig:
        return SchedulerConfig(
            max_num_batched_tokens=self.max_num_batched_tokens, max_num_seqs=self.max_num_seqs,
            max_model_len=self.max_model_len, reserve_blocks=reserve_blocks,
        )
