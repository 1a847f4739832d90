"""The chat prompt the frontend sends to the groups is transformers' `apply_chat_template(tokenize=True)`
for a checkpoint's tokenizer: its template writes BOS, the request's `add_generation_prompt` and
`chat_template_kwargs` reach it (vLLM's fields), and a conversation the template refuses is a 400
on `messages`, not a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from moeplane.workers.frontend.errors import InvalidRequest
from moeplane.workers.frontend.generation import chat_prompt_ids
from moeplane.workers.frontend.requests import parse_chat, parse_tokenize
from moeplane.workers.model import HFTokenizer

pytestmark = pytest.mark.unit

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Bonjour, ça va? 🙂"}]


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": CHAT, **fields}).encode()


@pytest.mark.parametrize("kind", ["deepseek-v3", "qwen3-moe"])
@pytest.mark.parametrize(
    "fields",
    [{}, {"add_generation_prompt": False}, {"chat_template_kwargs": {"enable_thinking": False}},
     {"add_special_tokens": True}],
    ids=["default", "no-generation-prompt", "template-kwargs", "add-special-tokens"],
)
def test_chat_prompt_ids_are_apply_chat_template(hf_checkpoint, kind: str, fields: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    path = hf_checkpoint(kind)
    reference = AutoTokenizer.from_pretrained(path)
    kwargs = fields.get("chat_template_kwargs", {})
    text = reference.apply_chat_template(
        CHAT, add_generation_prompt=fields.get("add_generation_prompt", True), tokenize=False, **kwargs
    )
    # vLLM: add_special_tokens tokenizes the rendered prompt with the tokenizer's own specials too.
    want = reference(text, add_special_tokens=fields.get("add_special_tokens", False)).input_ids
    if not fields.get("add_special_tokens"):
        assert want == reference.apply_chat_template(
            CHAT, add_generation_prompt=fields.get("add_generation_prompt", True), tokenize=True,
            return_dict=False, **kwargs,
        )
    tok = HFTokenizer(path)
    assert chat_prompt_ids(tok, parse_chat(_body(**fields)).body) == want
    assert chat_prompt_ids(tok, parse_tokenize(_body(**fields)).body) == want  # /tokenize: the same ids
    assert want[0] == tok.bos_id  # the template writes BOS itself


def test_a_conversation_the_template_refuses_is_a_400_on_messages(hf_checkpoint) -> None:
    tok = HFTokenizer(hf_checkpoint("qwen3-moe"))
    body = parse_chat(json.dumps({"messages": [{"role": "tool", "content": "42"}]}).encode()).body
    with pytest.raises(InvalidRequest) as refused:
        chat_prompt_ids(tok, body)
    assert refused.value.param == "messages"
    assert "Conversation roles must be system, user or assistant, got tool" in str(refused.value)
