"""OpenAI request bodies for /v1/completions and /v1/chat/completions, with vLLM's extra fields,
and their validation.

`parse_completion` and `parse_chat` take the raw body bytes and return a typed request or raise
`InvalidRequest` naming the offending field (`param`, e.g. `messages[1].content`), with a clean
message and a code. They never raise anything else, so a malformed body is always a 400.

Fields follow vLLM's server (`vllm/entrypoints/openai/protocol.py`): an unknown field is accepted
and ignored, and the caller logs it (`Parsed.ignored`); a field vLLM knows that this server does not
implement (guided decoding, beam search, tool calls, ...) is a 400 naming it, unless it carries its
no-op value (`unsupported.py`); every other field works.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from moeplane.workers.frontend.errors import InvalidRequest
from moeplane.workers.frontend.unsupported import check_unsupported
from moeplane.workers.serving.sequence import MAX_LOGPROBS, MAX_STOP_STRINGS, SEED_MAX, SEED_MIN
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_N = 128  # choices per prompt (the OpenAI API's limit)
MAX_CHOICES = 256  # prompts x n in one request

Prompt = str | tuple[int, ...]


class ChatRole(StrEnum):
    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class _Body(BaseModel):
    # Numbers and booleans are strict fields: "5" is not 5 and 1 is not true, as in the OpenAI API.
    # Unknown fields are kept aside (`model_extra`) and reported as ignored, as vLLM does.
    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = Field(True, strict=True)  # vLLM's default when stream_options is sent
    continuous_usage_stats: bool = Field(False, strict=True)  # usage on every chunk (vLLM)


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strict(default: Any, **bounds: Any) -> Any:
    return Field(default, strict=True, **bounds)


# Names the chat template already receives from the request itself.
_TEMPLATE_ARGUMENTS = frozenset({"messages", "add_generation_prompt", "tools", "documents"})


def _check_template_kwargs(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """chat_template_kwargs: variables the template reads (e.g. `enable_thinking`), not its
    arguments (those come from the request's own fields)."""
    clash = sorted(_TEMPLATE_ARGUMENTS & set(value or {}))
    if clash:
        raise ValueError(f"{', '.join(clash)} cannot be set here; use the request field of that name")
    return value


class SamplingBody(_Body):
    """Fields both endpoints share. None means the default, as in vLLM."""

    model: str | None = None  # None: the served model
    temperature: float | None = _strict(None, ge=0.0, le=2.0)
    top_p: float | None = _strict(None, gt=0.0, le=1.0)
    top_k: int | None = _strict(None, ge=-1)  # 0 or -1: off
    min_p: float | None = _strict(None, ge=0.0, le=1.0)
    presence_penalty: float | None = _strict(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = _strict(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = _strict(None, gt=0.0, le=100.0)
    logit_bias: dict[str, float] | None = None
    allowed_token_ids: tuple[int, ...] | None = None
    n: int = _strict(1, ge=1, le=MAX_N)
    stream: bool = _strict(False)
    stream_options: StreamOptions | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] | None = None
    include_stop_str_in_output: bool = _strict(False)
    ignore_eos: bool = _strict(False)  # keep generating past EOS (benchmarks with a fixed length)
    min_tokens: int = _strict(0, ge=0)
    skip_special_tokens: bool = _strict(True)
    seed: int | None = _strict(None)
    prompt_logprobs: int | None = _strict(None, ge=0, le=MAX_LOGPROBS)
    return_tokens_as_token_ids: bool | None = _strict(None)
    truncate_prompt_tokens: int | None = _strict(None, ge=1)
    request_id: str | None = Field(None, pattern=r"^[\x21-\x7e]{1,128}$")  # visible ASCII, as X-Request-Id
    user: str | None = None
    cache_salt: str | None = None  # accepted: there is no prefix cache to salt

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise ValueError("must be a string or an array of strings")
        if len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences are allowed")
        if any(s == "" for s in value):
            raise ValueError("stop sequences must not be empty strings")
        return tuple(value)

    @field_validator("stop_token_ids", "allowed_token_ids", mode="before")
    @classmethod
    def _token_ids(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list) or not all(_is_int(t) for t in value):
            raise ValueError("must be an array of token ids (integers)")
        if any(t < 0 for t in value):
            raise ValueError("token ids must be >= 0")
        return tuple(value)

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not (key.isascii() and key.isdigit()):
                raise ValueError(f"keys must be token ids as strings, like \"50256\"; {key!r} is not")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"the bias of token {key} must be in [-100, 100]")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is not None and not SEED_MIN <= value <= SEED_MAX:
            raise ValueError("must be a 64-bit signed integer, in [-2**63, 2**63)")
        return value

    @model_validator(mode="after")
    def _stream_only(self) -> SamplingBody:
        if self.stream_options is not None and not self.stream:
            raise _FieldError("stream_options", "is only allowed when stream is true")
        if self.prompt_logprobs and self.stream:
            raise _FieldError("prompt_logprobs", "is not available when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats


class CompletionRequest(SamplingBody):
    """POST /v1/completions. `prompt` is a string, a list of token ids, or a list of either."""

    prompt: tuple[Prompt, ...]
    max_tokens: int | None = _strict(16, ge=0)  # None: what the context leaves; 0 only with echo
    echo: bool = _strict(False)
    logprobs: int | None = _strict(None, ge=0, le=MAX_LOGPROBS)
    add_special_tokens: bool = _strict(True)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, value: Any) -> Any:
        def one(v: Any) -> Prompt | None:
            if isinstance(v, str):
                return v if v else None
            if isinstance(v, list) and v and all(_is_int(t) for t in v):
                return tuple(v)
            return None

        if (single := one(value)) is not None:
            return (single,)
        if isinstance(value, list) and value:
            prompts = [one(v) for v in value]
            if all(p is not None for p in prompts):
                return tuple(prompts)
        raise ValueError(
            "must be a non-empty string, a non-empty array of token ids, or a non-empty array of those"
        )

    @model_validator(mode="after")
    def _limits(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise _FieldError("max_tokens", "must be >= 1 (0 is allowed only with echo)")
        if len(self.prompt) * self.n > MAX_CHOICES:
            raise _FieldError("n", f"{len(self.prompt)} prompts x n={self.n} exceeds {MAX_CHOICES} choices")
        return self


class ChatCompletionRequest(SamplingBody):
    """POST /v1/chat/completions."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = _strict(None, ge=1)
    max_completion_tokens: int | None = _strict(None, ge=1)
    logprobs: bool = _strict(False)
    top_logprobs: int | None = _strict(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = _strict(False)  # vLLM: prepend the last message when it is the assistant's
    add_special_tokens: bool = _strict(False)  # BOS on top of what the chat template adds
    add_generation_prompt: bool = _strict(True)  # the template's opening of the assistant's reply
    chat_template_kwargs: dict[str, Any] | None = None  # more variables for the template (vLLM)
    parallel_tool_calls: bool | None = None  # accepted: no tool is ever called

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_template_kwargs(value)

    @field_validator("messages")
    @classmethod
    def _some_messages(cls, value: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
        if not value:
            raise ValueError("must contain at least one message")
        return value

    @model_validator(mode="after")
    def _top_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise _FieldError("top_logprobs", "requires logprobs to be true")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class TokenizeRequest(_Body):
    """POST /tokenize: a prompt, or chat messages rendered with the chat template (vLLM)."""

    model: str | None = None
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    add_special_tokens: bool | None = _strict(None)  # None: True for a prompt, False for messages
    add_generation_prompt: bool = _strict(True)
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = _strict(False)

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_template_kwargs(value)

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise _FieldError("prompt", "send either prompt or messages")
        return self


class DetokenizeRequest(_Body):
    """POST /detokenize."""

    model: str | None = None
    tokens: tuple[int, ...]

    @field_validator("tokens", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        if not isinstance(value, list) or not all(_is_int(t) for t in value):
            raise ValueError("must be an array of token ids (integers)")
        return tuple(value)


class _FieldError(ValueError):
    """A cross-field check that names its field (a model validator's errors have no location)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


_R = TypeVar("_R", bound=BaseModel)


@dataclass(frozen=True)
class Parsed(Generic[_R]):
    body: _R
    ignored: tuple[str, ...]  # unknown fields, as paths (`metadata`, `messages[0].tool_calls`)


def _param(loc: tuple[int | str, ...]) -> str:
    """('messages', 1, 'content') -> 'messages[1].content'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


# pydantic's error types -> our wording (the rest keep pydantic's message).
_PLAIN = {
    "bool_type": "must be a boolean",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "list_type": "must be an array",
    "tuple_type": "must be an array",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "enum": "must be one of {expected}",
    "literal_error": "must be {expected}",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "string_too_short": "must not be empty",
    "string_too_long": "must be at most {max_length} characters",
    "string_pattern_mismatch": "must be 1 to 128 visible ASCII characters",
}


def _invalid(error: Any) -> InvalidRequest:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    cross = kind == "value_error" and isinstance(ctx.get("error"), _FieldError)
    if cross:
        loc = (ctx["error"].field,)
    param = _param(loc) or None
    if kind == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'", param=param, code="missing_required_parameter"
        )
    if kind in _PLAIN:
        msg = _PLAIN[kind].format(**{k: v for k, v in ctx.items() if isinstance(v, int | float | str)})
    else:
        msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    shown = json.dumps(error.get("input"), default=str)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    got = "" if cross else f" (got {shown})"
    return InvalidRequest(f"Invalid value for '{param}': {msg}{got}", param=param, code="invalid_value")


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from None
    if not isinstance(obj, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, got {type(obj).__name__}", code="invalid_json"
        )
    return obj


def _extras(model: BaseModel, prefix: str = "") -> list[str]:
    """Paths of the unknown fields anywhere in a validated body."""
    out = [f"{prefix}{k}" for k in model.model_extra or {}]
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, tuple) else (value,)
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                at = f"{prefix}{name}[{i}]." if isinstance(value, tuple) else f"{prefix}{name}."
                out.extend(_extras(item, at))
    return out


def _parse(model: type[_R], body: bytes, endpoint: str) -> Parsed[_R]:
    obj = _load_json(body)
    check_unsupported(obj, endpoint)
    try:
        parsed = model.model_validate(obj)
    except ValidationError as exc:
        raise _invalid(exc.errors()[0]) from None
    return Parsed(parsed, tuple(_extras(parsed)))


def parse_completion(body: bytes) -> Parsed[CompletionRequest]:
    return _parse(CompletionRequest, body, "completions")


def parse_chat(body: bytes) -> Parsed[ChatCompletionRequest]:
    return _parse(ChatCompletionRequest, body, "chat")


def parse_tokenize(body: bytes) -> Parsed[TokenizeRequest]:
    return _parse(TokenizeRequest, body, "tokenize")


def parse_detokenize(body: bytes) -> Parsed[DetokenizeRequest]:
    return _parse(DetokenizeRequest, body, "detokenize")
