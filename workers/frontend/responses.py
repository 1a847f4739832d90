"""OpenAI response bodies and the server-sent-events framing, exactly as the OpenAI API sends them.

Streaming: each event is `data: <json>\\n\\n`; the stream ends with `data: [DONE]\\n\\n`. An
error after the stream started is sent as `data: {"error": {...}}\\n\\n` (what the official
client raises from), followed by `[DONE]`.
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


def completion_chunk(
    rid: str, created: int, model: str, text: str, finish: FinishReason | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_text(finish)}],
    }


def completion_body(
    rid: str, created: int, model: str, text: str, finish: FinishReason | None, use: dict[str, int]
) -> dict[str, Any]:
    return {**completion_chunk(rid, created, model, text, finish), "usage": use}


def chat_chunk(
    rid: str, created: int, model: str, delta: dict[str, str], finish: FinishReason | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_text(finish)}],
    }


def chat_body(
    rid: str, created: int, model: str, text: str, finish: FinishReason | None, use: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_text(finish),
            }
        ],
        "usage": use,
    }


def usage_chunk(rid: str, created: int, model: str, obj: str, use: dict[str, int]) -> dict[str, Any]:
    """The last chunk when `stream_options.include_usage` is set: no choices, only usage."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use}


def models_body(models: list[str], created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": created, "owned_by": "moeplane"} for m in models],
    }
