"""OpenAI request bodies for /v1/completions and /v1/chat/completions, and their validation.

`parse_completion` and `parse_chat` take the raw body bytes and return a typed request or raise
`InvalidRequest` naming the offending field (`param`, e.g. `messages[1].content`) with the value
and the bound it broke. They never raise anything else, so a malformed body is always a 400.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, TypeVar

from moeplane.workers.frontend.errors import InvalidRequest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

MAX_STOP_SEQUENCES = 4


class ChatRole(StrEnum):
    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class _Body(BaseModel):
    # Numbers and booleans are strict fields: "5" is not 5 and 1 is not true, as in the OpenAI API.
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamOptions(_Body):
    include_usage: bool = Field(False, strict=True)


class ChatMessage(_Body):
    role: ChatRole
    content: str = Field(description="Text content; a list of text parts is joined.")
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, list):
            texts = []
            for i, part in enumerate(value):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                    part.get("text"), str
                ):
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise ValueError(
                        f"content part {i} has type {kind!r}; only text parts "
                        '({"type": "text", "text": "..."}) are supported'
                    )
                texts.append(part["text"])
            return "".join(texts)
        return value


class SamplingBody(_Body):
    """Fields both endpoints share."""

    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0, strict=True)
    top_p: float = Field(1.0, gt=0.0, le=1.0, strict=True)
    n: int = Field(1, ge=1, strict=True)
    stream: bool = Field(False, strict=True)
    stream_options: StreamOptions | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = Field(None, strict=True)
    user: str | None = None
    # Accepted only at their no-op defaults, so clients that always send them keep working.
    presence_penalty: float = Field(0.0, strict=True)
    frequency_penalty: float = Field(0.0, strict=True)
    logit_bias: dict[str, float] | None = None
    # Extension (as in vLLM): keep generating past EOS, for benchmarks with a fixed output length.
    ignore_eos: bool = Field(False, strict=True)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise ValueError("must be a string or a list of strings")
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(value)}")
        if any(s == "" for s in value):
            raise ValueError("stop sequences must not be empty strings")
        return tuple(value)

    @field_validator("n")
    @classmethod
    def _single_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"only n=1 is supported, got {value}")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0.0:
            raise ValueError(f"penalties are not supported; send 0 or omit it (got {value})")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported; omit it or send {}")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if value is not None and not info.data.get("stream", False):
            raise ValueError("stream_options is only allowed when stream is true")
        return value


class CompletionRequest(SamplingBody):
    """POST /v1/completions. `prompt` is a string or a list of token ids (one prompt)."""

    prompt: str | tuple[int, ...]
    max_tokens: int | None = Field(16, ge=1, strict=True)
    echo: bool = Field(False, strict=True)
    logprobs: int | None = Field(None, strict=True)
    suffix: str | None = None
    best_of: int | None = Field(None, strict=True)

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise ValueError("prompt must not be empty")
            return value
        if isinstance(value, list):
            if value and all(isinstance(v, str) for v in value):
                if len(value) != 1:
                    raise ValueError(f"only one prompt per request is supported, got {len(value)}")
                return cls._one_prompt(value[0])
            if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return tuple(value)
            if value and all(isinstance(v, list) for v in value):
                if len(value) != 1:
                    raise ValueError(f"only one prompt per request is supported, got {len(value)}")
                return cls._one_prompt(value[0])
        raise ValueError("must be a non-empty string or a non-empty list of token ids")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("logprobs", "best_of")
    @classmethod
    def _unsupported_int(cls, value: int | None) -> int | None:
        if value not in (None, 0, 1):
            raise ValueError(f"is not supported (got {value})")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix is not supported")
        return value


class ChatCompletionRequest(SamplingBody):
    """POST /v1/chat/completions."""

    messages: tuple[ChatMessage, ...] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True)
    logprobs: bool = Field(False, strict=True)

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool) -> bool:
        if value:
            raise ValueError("logprobs is not supported")
        return value

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


_R = TypeVar("_R", bound=SamplingBody)


def _param(loc: tuple[int | str, ...]) -> str:
    """('messages', 1, 'content') -> 'messages[1].content'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _invalid(error: Any) -> InvalidRequest:
    loc = tuple(error.get("loc", ()))
    param = _param(loc) or None
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return InvalidRequest(
            f"Unrecognized request argument supplied: {param}", param=param, code="unrecognized_argument"
        )
    if kind == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'", param=param, code="missing_required_parameter"
        )
    msg = str(error.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    shown = json.dumps(error.get("input"), default=str)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return InvalidRequest(
        f"Invalid value for '{param}': {msg} (got {shown})", param=param, code="invalid_value"
    )


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from None
    if not isinstance(obj, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, got {type(obj).__name__}", code="invalid_json"
        )
    return obj


def _parse(model: type[_R], body: bytes) -> _R:
    obj = _load_json(body)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise _invalid(exc.errors()[0]) from None


def parse_completion(body: bytes) -> CompletionRequest:
    return _parse(CompletionRequest, body)


def parse_chat(body: bytes) -> ChatCompletionRequest:
    return _parse(ChatCompletionRequest, body)


