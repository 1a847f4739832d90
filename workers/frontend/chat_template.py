"""The chat template: messages -> one prompt string, ending where the assistant's reply begins.

Each message is rendered as `<|role|>\\n{content}\\n` and the prompt ends with `<|assistant|>\\n`.
Models with a tokenizer-defined template would render theirs here instead; the built-in byte
tokenizer has none, so this plain, unambiguous form is the template for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from moeplane.workers.frontend.requests import ChatMessage, ChatRole


def render_chat(messages: Sequence[ChatMessage]) -> str:
    parts = [f"<|{m.role}|>\n{m.content}\n" for m in messages]
    parts.append(f"<|{ChatRole.ASSISTANT}|>\n")
    return "".join(parts)
