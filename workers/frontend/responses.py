"""OpenAI response bodies and the server-sent-events framing, as the OpenAI API and vLLM send them.

Streaming: each event is `data: <json>\\n\\n`; the stream ends with `data: [DONE]\\n\\n`. An
error after the stream started is sent as `data: {"error": {...}}\\n\\n` (what the official
client raises from), followed by `[DONE]`. Every event carries one choice, named by its `index`
(choices of a request with n > 1 or several prompts interleave).

Choices carry vLLM's `stop_reason`: the stop string or stop token id that ended them, else null.
"""

from __future__ import annotations

import json
from typing import Any

from moeplane.workers.serving.sequence import FinishReason

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",  # proxies must not buffer a token stream
}
OWNED_BY = "moeplane"


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def finish_text(reason: FinishReason | None) -> str | None:
    """The OpenAI `finish_reason`: only stop and length reach a client as a normal finish."""
    return None if reason is None else str(reason)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_choice(
    index: int, text: str, logprobs: dict[str, Any] | None, finish: FinishReason | None,
    stop_reason: str | int | None, prompt_logprobs: list[Any] | None = None,
) -> dict[str, Any]:
    choice = {
        "index": index,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": finish_text(finish),
        "stop_reason": stop_reason,
    }
    if prompt_logprobs is not None:
        choice["prompt_logprobs"] = prompt_logprobs
    return choice


def chat_choice(
    index: int, text: str, logprobs: dict[str, Any] | None, finish: FinishReason | None,
    stop_reason: str | int | None,
) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "logprobs": logprobs,
        "finish_reason": finish_text(finish),
        "stop_reason": stop_reason,
    }


def chat_delta(
    index: int, delta: dict[str, str], logprobs: dict[str, Any] | None, finish: FinishReason | None,
    stop_reason: str | int | None,
) -> dict[str, Any]:
    return {
        "index": index,
        "delta": delta,
        "logprobs": logprobs,
        "finish_reason": finish_text(finish),
        "stop_reason": stop_reason,
    }


def body(
    obj: str, rid: str, created: int, model: str, choices: list[dict[str, Any]],
    use: dict[str, int] | None = None, **extra: Any,
) -> dict[str, Any]:
    """A response or a stream chunk: `obj` is text_completion, chat.completion or
    chat.completion.chunk. `use` is left out when None (chunks without usage)."""
    out: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}
    if use is not None:
        out["usage"] = use
    out.update(extra)
    return out


def models_body(model: str, root: str, max_model_len: int, created: int) -> dict[str, Any]:
    """GET /v1/models, with vLLM's `root`, `parent` and `max_model_len`."""
    return {"object": "list", "data": [model_card(model, root, max_model_len, created)]}


def model_card(model: str, root: str, max_model_len: int, created: int) -> dict[str, Any]:
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": OWNED_BY,
        "root": root,
        "parent": None,
        "max_model_len": max_model_len,
    }


def tokenize_body(tokens: list[int], max_model_len: int, token_strs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens}
    if token_strs is not None:
        out["token_strs"] = token_strs
    return out
