"""Logprobs in the OpenAI/vLLM response shapes, from the engines' `TokenLogprobs` (no torch).

- Completions (`logprobs: N`): `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`.
  Each `top_logprobs` entry maps token strings to logprobs: the chosen token first, then the N
  most likely (so up to N + 1 entries, as the OpenAI API documents); a position without logprobs
  (the first prompt token under `echo`) is null. `text_offset` is the running length of the
  token strings, as vLLM computes it.
- Chat (`logprobs: true, top_logprobs: N`): `{"content": [{"token", "logprob", "bytes",
  "top_logprobs": [N most likely, each {"token", "logprob", "bytes"}]}]}`.
- vLLM's `prompt_logprobs`: `[null, {"<token id>": {"logprob", "rank", "decoded_token"}}, ...]`,
  the prompt token first, then its N most likely alternatives.

Logprobs are of the model's raw distribution (before temperature, penalties and filters), -inf
clamped to -9999.0 as vLLM does. `as_ids` writes tokens as `token_id:N` (vLLM's
`return_tokens_as_token_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moeplane.workers.model.tokenizer import Tokenizer
from moeplane.workers.serving.detok import token_bytes, token_text
from moeplane.workers.serving.logprobs import TokenLogprobs

FLOOR = -9999.0


def _lp(value: float) -> float:
    return max(value, FLOOR)


class TokenNames:
    """Token id -> its string and bytes, cached (a response repeats the same tokens often)."""

    def __init__(self, tokenizer: Tokenizer, as_ids: bool = False) -> None:
        self.tokenizer = tokenizer
        self.as_ids = as_ids
        self._cache: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        name = self._cache.get(token_id)
        if name is None:
            name = f"token_id:{token_id}" if self.as_ids else token_text(self.tokenizer, token_id)
            self._cache[token_id] = name
        return name

    def bytes(self, token_id: int) -> list[int]:
        if self.as_ids:
            return list(self.text(token_id).encode())
        return list(token_bytes(self.tokenizer, token_id))


def completion_logprobs(
    names: TokenNames,
    token_ids: Sequence[int],
    entries: Sequence[TokenLogprobs | None],
    num_top: int,
    initial_offset: int = 0,
) -> tuple[dict[str, Any], int]:
    """The completions `logprobs` object for these tokens, and the text offset after them."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float] | None] = []
    offsets: list[int] = []
    offset = initial_offset
    for token_id, entry in zip(token_ids, entries, strict=True):
        name = names.text(token_id)
        tokens.append(name)
        offsets.append(offset)
        offset += len(name)
        if entry is None:
            token_logprobs.append(None)
            top.append(None)
            continue
        token_logprobs.append(_lp(entry.logprob))
        alternatives = {name: _lp(entry.logprob)}
        for alt_id, alt_lp in entry.top[:num_top]:
            alternatives.setdefault(names.text(alt_id), _lp(alt_lp))
        top.append(alternatives)
    body = {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": tokens, "top_logprobs": top}
    return body, offset


def chat_logprobs(names: TokenNames, entries: Sequence[TokenLogprobs], num_top: int) -> dict[str, Any]:
    """The chat `logprobs` object (`{"content": [...]}`) for these output tokens."""
    content = []
    for entry in entries:
        content.append({
            "token": names.text(entry.token_id),
            "logprob": _lp(entry.logprob),
            "bytes": names.bytes(entry.token_id),
            "top_logprobs": [
                {"token": names.text(t), "logprob": _lp(v), "bytes": names.bytes(t)}
                for t, v in entry.top[:num_top]
            ],
        })
    return {"content": content}


def prompt_logprobs(
    names: TokenNames, entries: Sequence[TokenLogprobs], num_top: int
) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's `prompt_logprobs`: null for the first prompt token, then one dict per token."""
    out: list[dict[str, dict[str, Any]] | None] = [None]
    for entry in entries:
        d = {str(entry.token_id): {"logprob": _lp(entry.logprob), "rank": entry.rank,
                                   "decoded_token": names.text(entry.token_id)}}
        for rank, (t, v) in enumerate(entry.top[:num_top], start=1):
            d.setdefault(str(t), {"logprob": _lp(v), "rank": rank, "decoded_token": names.text(t)})
        out.append(d)
    return out
