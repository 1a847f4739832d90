"""The chat template: messages -> one prompt string, ending where the assistant's reply begins.

The tokenizer renders it (`Tokenizer.apply_chat_template`, `moeplane.workers.model`): a
checkpoint's own jinja template exactly as transformers renders it, or for the built-in byte
tokenizer the plain form `<|role|>\\n{content}\\n` ... `<|assistant|>\\n`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moeplane.workers.frontend.requests import ChatMessage
from moeplane.workers.model.tokenizer import ByteTokenizer, Tokenizer


def render_chat(
    messages: Sequence[ChatMessage], tokenizer: Tokenizer | None = None, add_generation_prompt: bool = True,
    **kwargs: Any,
) -> str:
    """The prompt for `messages` (default tokenizer: the byte tokenizer's plain form)."""
    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    return tok.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, **kwargs)
