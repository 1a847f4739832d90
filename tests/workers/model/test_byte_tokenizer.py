"""The tokenizer interface and the byte-level tokenizer of the tiny preset."""

from __future__ import annotations

import pytest
from moeplane.api.presets import model_preset
from moeplane.workers.model import ByteTokenizer, Tokenizer, load_tokenizer
from moeplane.workers.model.tokenizer import TokenizerError

pytestmark = pytest.mark.unit


def test_utf8_round_trip_with_bos_and_dropped_specials() -> None:
    tok = load_tokenizer("bytes", model_preset("tiny"))
    assert isinstance(tok, Tokenizer)
    ids = tok.encode("héllo ✓")
    assert ids[0] == tok.bos_id and max(ids[1:]) < 256
    assert tok.decode([*ids, tok.eos_id, tok.pad_id]) == "héllo ✓"
    assert tok.encode("a", add_special_tokens=False) == [97] == tok.encode("a", add_bos=False)
    assert tok.eos_ids == {tok.eos_id}
    assert tok.decode([tok.bos_id, 104, 105], skip_special_tokens=False) == "<|bos|>hi"
    assert tok.convert_ids_to_tokens([104, 0xC3, tok.eos_id]) == ["h", "bytes:\\xc3", "<|eos|>"]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat == "<|user|>\nhi\n<|assistant|>\n"
    # The plain template has no text for BOS: the chat prompt's ids start with it, and
    # add_special_tokens adds the tokenizer's own on top (vLLM's chat field).
    messages = [{"role": "user", "content": "hi"}]
    assert tok.encode_chat(messages) == tok.encode(chat)
    assert tok.encode_chat(messages, add_generation_prompt=False) == tok.encode("<|user|>\nhi\n")
    assert tok.encode_chat(messages, add_special_tokens=True) == [tok.bos_id, *tok.encode(chat)]


def test_out_of_vocab_ids_and_big_vocabularies_are_errors() -> None:
    with pytest.raises(TokenizerError, match=r"\[300\] are outside the vocabulary of 260"):
        ByteTokenizer().decode([300])
    with pytest.raises(TokenizerError, match="129280-token vocabulary"):
        load_tokenizer("bytes", model_preset("deepseek-v3"))
    assert load_tokenizer(None, model_preset("tiny")).vocab_size == model_preset("tiny").vocab_size
