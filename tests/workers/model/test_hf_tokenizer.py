"""The checkpoint's tokenizer and chat template equal transformers' (`AutoTokenizer` on the same
directory), and streaming detokenisation is incremental and never splits a character."""

from __future__ import annotations

from pathlib import Path

import pytest
from moeplane.api.hf_config import read_hf_config
from moeplane.workers.model.chat_template import ChatTemplateError
from moeplane.workers.model.hf_tokenizer import HFTokenizer
from moeplane.workers.model.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from moeplane.workers.serving.text import TextStream

pytestmark = pytest.mark.unit

TEXTS = [
    "Hello world!",
    "  leading spaces and trailing  ",
    "héllo wörld, ça va? naïve façade",
    "日本語のテキスト、中文文本，한국어",
    "emoji 🙂🚀 family 👩‍👩‍👧 flag 🇫🇷 ✨",
    "code:\n\tdef f(x):\n\t\treturn x  # done\r\n",
    "<|im_start|>user\nspecial tokens inline<|im_end|></s>",
    "",
]
CHATS = [
    [{"role": "user", "content": "Hi there 🙂"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}],
]


def _hf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("kind", ["deepseek-v3", "qwen3-moe"])
def test_encode_and_decode_equal_transformers(hf_checkpoint, kind: str) -> None:
    path = hf_checkpoint(kind)
    ours, theirs = HFTokenizer(path), _hf_tokenizer(path)
    assert isinstance(ours, Tokenizer)
    assert ours.vocab_size == len(theirs)
    assert (ours.bos_id, ours.pad_id) == (theirs.bos_token_id, theirs.pad_token_id)
    for text in TEXTS:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == theirs.encode(text, add_special_tokens=special), (text, special)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
        assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
    # DeepSeek's tokenizer_config adds BOS (add_bos_token), Qwen's does not.
    assert (ours.encode("x")[0] == ours.bos_id) == (kind == "deepseek-v3")


@pytest.mark.parametrize("kind", ["deepseek-v3", "qwen3-moe"])
def test_chat_template_equals_apply_chat_template(hf_checkpoint, kind: str) -> None:
    path = hf_checkpoint(kind)
    ours, theirs = HFTokenizer(path), _hf_tokenizer(path)
    for chat in CHATS:
        for gen in (True, False):
            for kwargs in ({}, {"enable_thinking": False}, {"meta": {"ß": [1, "<b>"]}, "add_bos": False}):
                text = ours.apply_chat_template(chat, add_generation_prompt=gen, **kwargs)
                want = theirs.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False, **kwargs)
                assert text == want, (chat, gen, kwargs)
                ids = theirs.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True, **kwargs)
                ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
                assert ours.encode(text, add_special_tokens=False) == list(ids)
    refused = "Conversation roles must be system, user or assistant, got tool"
    with pytest.raises(ChatTemplateError, match=refused):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


def test_eos_ids_come_from_generation_config_and_the_tokenizer(hf_checkpoint) -> None:
    path = hf_checkpoint("qwen3-moe")
    tok = load_tokenizer(str(path), read_hf_config(path).arch)
    im_end, end = tok.encode("<|im_end|></s>", add_special_tokens=False)
    assert tok.eos_id == im_end and tok.eos_ids == {im_end, end}
    assert isinstance(load_tokenizer("bytes"), ByteTokenizer)


def _stream(tok: Tokenizer, ids: list[int], skip: bool = True) -> list[str]:
    stream, deltas = TextStream(tok, skip_special_tokens=skip), []
    for n in range(1, len(ids) + 1):
        deltas.append(stream.update(ids[:n]).text)
    deltas.append(stream.flush(ids))
    return deltas


@pytest.mark.parametrize("kind", ["deepseek-v3", "qwen3-moe"])
def test_incremental_detokenisation_never_splits_characters(hf_checkpoint, kind: str) -> None:
    tok = HFTokenizer(hf_checkpoint(kind))
    text = "Ça 🙂🚀 日本語 👩‍👩‍👧 <|im_end|> done ✨"
    ids = tok.encode(text, add_special_tokens=False)
    # Byte-level BPE splits these characters across tokens: some tokens alone are not UTF-8.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    for skip in (True, False):
        deltas = _stream(tok, ids, skip)
        assert all("\ufffd" not in d for d in deltas)
        assert "".join(deltas) == tok.decode(ids, skip_special_tokens=skip)
    assert "<|im_end|>" not in "".join(_stream(tok, ids))


def test_incremental_detokenisation_decodes_a_window_not_everything(hf_checkpoint) -> None:
    tok = HFTokenizer(hf_checkpoint("qwen3-moe"))
    ids = tok.encode("the quick brown fox jumps over the lazy dog " * 8, add_special_tokens=False)
    decoded: list[int] = []

    class Counting:
        eos_id = tok.eos_id

        def decode(self, window, skip_special_tokens=True):
            decoded.append(len(window))
            return tok.decode(window, skip_special_tokens=skip_special_tokens)

    assert "".join(_stream(Counting(), ids)) == tok.decode(ids)  # type: ignore[arg-type]
    assert max(decoded) <= 4  # windows of a few tokens, never the whole output
