"""Requests as the engines see them: sampling parameters and sequence state (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum

from moeplane.workers.serving.logprobs import TokenLogprobs

MAX_STOP_STRINGS = 32


class EngineRequestError(ValueError):
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


# Greedy below this temperature, as in vLLM.
GREEDY_TEMPERATURE = 1e-5
MAX_LOGPROBS = 20  # top logprobs per token one request may ask for (vLLM's default max_logprobs)
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # a torch int64, as vLLM accepts


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling, with vLLM's meanings. temperature < 1e-5 is greedy; `seed` makes random
    sampling reproducible. Token ids are checked against the vocabulary by the engine.

    Penalties (vLLM's definitions): `repetition_penalty` divides positive logits and multiplies
    negative ones of every token in the prompt or the output; `frequency_penalty` subtracts
    penalty x count and `presence_penalty` subtracts penalty once, over output tokens only.
    Filters apply after temperature, in vLLM's order: min_p (relative to the most likely token's
    probability), then top_k, then top_p.

    `logprobs` (0..MAX_LOGPROBS) asks for each output token's logprob, rank and the top-N
    alternatives; `prompt_logprobs` the same for every prompt token after the first. Logprobs are
    of the model's raw distribution (log-softmax of the logits before any penalty, bias, filter or
    temperature), as vLLM returns them by default.

    `output_offset` counts output tokens an earlier attempt already produced (a request resumed
    on another group after a failure; their ids end the prompt): seeds, penalties and min_tokens
    count them as output, so a resumed request samples exactly as an uninterrupted one.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    allowed_token_ids: tuple[int, ...] = ()  # empty: every token
    seed: int | None = None
    max_tokens: int = 16
    min_tokens: int = 0  # EOS and stop_token_ids are masked until this many output tokens
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    output_offset: int = 0

    def __post_init__(self) -> None:
        self._check_ranges()
        if len(self.stop) > MAX_STOP_STRINGS:
            raise EngineRequestError("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        if any(not s for s in self.stop):
            raise EngineRequestError("stop", "stop strings must not be empty")
        ids = {
            "stop_token_ids": self.stop_token_ids,
            "allowed_token_ids": self.allowed_token_ids,
            "logit_bias": tuple(t for t, _ in self.logit_bias),
        }
        for name, values in ids.items():
            if any(t < 0 for t in values):
                raise EngineRequestError(name, f"token ids must be >= 0, got {min(values)}")
        if any(not -100.0 <= b <= 100.0 for _, b in self.logit_bias):
            raise EngineRequestError("logit_bias", "biases must be in [-100, 100]")

    def _check_ranges(self) -> None:
        bounds: list[tuple[str, bool, str]] = [
            ("temperature", 0.0 <= self.temperature <= 100.0, "[0, 100]"),
            ("top_p", 0.0 < self.top_p <= 1.0, "(0, 1]"),
            ("top_k", self.top_k >= 0, ">= 0 (0: off)"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "[0, 1]"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "[-2, 2]"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "[-2, 2]"),
            ("repetition_penalty", 0.0 < self.repetition_penalty <= 100.0, "(0, 100]"),
            ("max_tokens", self.max_tokens >= 1, ">= 1"),
            ("min_tokens", self.min_tokens >= 0, ">= 0"),
            ("seed", self.seed is None or SEED_MIN <= self.seed <= SEED_MAX, "[-2**63, 2**63)"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS, f"[0, {MAX_LOGPROBS}]"),
            ("prompt_logprobs", self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= MAX_LOGPROBS,
             f"[0, {MAX_LOGPROBS}]"),
            ("output_offset", self.output_offset >= 0, ">= 0"),
        ]
        for name, ok, bound in bounds:
            if not ok:
                raise EngineRequestError(name, f"must be in {bound}, got {getattr(self, name)}")
        if self.min_tokens > self.output_offset + self.max_tokens:
            raise EngineRequestError(
                "min_tokens", f"must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}"
            )

    def check_vocab(self, vocab_size: int) -> None:
        """Raise EngineRequestError if a token id this request names is outside the vocabulary."""
        ids = {
            "stop_token_ids": self.stop_token_ids,
            "allowed_token_ids": self.allowed_token_ids,
            "logit_bias": tuple(t for t, _ in self.logit_bias),
        }
        for name, values in ids.items():
            if bad := [i for i in values if i >= vocab_size]:
                raise EngineRequestError(
                    name, f"token ids {bad[:5]} are outside the vocabulary of {vocab_size}"
                )

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    def resumed(self, num_emitted: int) -> SamplingParams:
        """These params for an attempt that continues after `num_emitted` output tokens (appended
        to its prompt): fewer tokens to go, the same seeds and penalties, no prompt logprobs again."""
        if num_emitted == 0:
            return self
        return replace(
            self, max_tokens=self.max_tokens - num_emitted, output_offset=self.output_offset + num_emitted,
            prompt_logprobs=None,
        )


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
    # Logprobs of prompt tokens 1.. as computed so far (when `sampling.prompt_logprobs` is set).
    prompt_logprobs: list[TokenLogprobs] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.request_id:
            raise EngineRequestError("request_id", "must not be empty")
        if self.num_prompt_tokens < 1 or self.num_prompt_tokens > len(self.token_ids):
            raise EngineRequestError(
                "prompt_token_ids", f"need at least one prompt token, got {self.num_prompt_tokens}"
            )
        if self.num_true_prompt_tokens < 1:
            raise EngineRequestError(
                "output_offset",
                f"{self.sampling.output_offset} earlier outputs leave no prompt in "
                f"{self.num_prompt_tokens} tokens",
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
    def num_true_prompt_tokens(self) -> int:
        """Prompt tokens less the outputs of earlier attempts that a resumed request carries."""
        return self.num_prompt_tokens - self.sampling.output_offset

    @property
    def all_output_token_ids(self) -> list[int]:
        """Every output token of the request, those of earlier attempts included."""
        return self.token_ids[self.num_true_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
