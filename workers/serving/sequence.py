"""Requests as the engines see them: sampling parameters and sequence state (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum

MAX_STOP_STRINGS = 8


class InvalidRequest(ValueError):
    """A request the engine cannot serve; `field` names the offending parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class FinishReason(StrEnum):
    STOP = "stop"  # EOS or a stop string
    LENGTH = "length"  # max_tokens or the model's length
    CANCELLED = "cancelled"
    ERROR = "error"


class ErrorKind(StrEnum):
    """Why a request ended with FinishReason.ERROR."""

    INVALID_REQUEST = "invalid_request"  # the caller's fault; the message names the field
    KV_TRANSFER = "kv_transfer"  # the prompt's KV could not be pulled (retry with a new prefill)
    INTERNAL = "internal"
    GROUP_FAILED = "group_failed"  # the group lost a rank, or drained: resume on another group


class SequenceStatus(Enum):
    WAITING = "waiting"  # queued for (re)computation
    WAITING_FOR_KV = "waiting_for_kv"  # blocks reserved, KV being pulled from prefill
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. temperature 0 is greedy; `seed` makes random sampling reproducible."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 100.0:
            raise InvalidRequest("temperature", f"must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise InvalidRequest("max_tokens", f"must be >= 1, got {self.max_tokens}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidRequest("seed", f"must be in [0, 2**63), got {self.seed}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequest("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        if any(not s for s in self.stop):
            raise InvalidRequest("stop", "stop strings must not be empty")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Sequence:
    """One request on one DP rank. `token_ids` is the prompt followed by the output so far.

    `num_computed_tokens` tokens have their KV in the cache; a step computes the next tokens from
    there, and when it reaches the last token it yields logits to sample the next one.
    """

    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    sampling: SamplingParams
    arrival_s: float = 0.0
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    first_scheduled_s: float | None = None
    stop_text: str = field(default="", repr=False)  # output text so far (stop-string checks)

    def __post_init__(self) -> None:
        if not self.request_id:
            raise InvalidRequest("request_id", "must not be empty")
        if self.num_prompt_tokens < 1 or self.num_prompt_tokens > len(self.token_ids):
            raise InvalidRequest(
                "prompt_token_ids", f"need at least one prompt token, got {self.num_prompt_tokens}"
            )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
