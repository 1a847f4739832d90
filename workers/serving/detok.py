"""Token text with special tokens kept: `skip_special_tokens: false`, and the per-token strings and
bytes that logprobs report (no torch).

The tokenizer protocol is growing `decode(ids, skip_special_tokens=...)` (issue 14, Hugging Face
tokenizers); until every tokenizer has it, the byte tokenizer of `tiny` is handled here: its
special ids (BOS, EOS, PAD, and any above them) are written as `<s>`, `</s>`, `<pad>` and
`<special_N>`, and its byte ids are single bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

from moeplane.workers.model.tokenizer import ByteTokenizer
from moeplane.workers.serving.text import TokenDecoder


class _DecodesSpecial(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


def special_text(tok: ByteTokenizer, token_id: int) -> str:
    names = {tok.bos_id: "<s>", tok.eos_id: "</s>", tok.pad_id: "<pad>"}
    return names.get(token_id, f"<special_{token_id}>")


def _byte_pieces(tok: ByteTokenizer, ids: Sequence[int]) -> bytes:
    out = bytearray()
    for i in ids:
        out += bytes([i]) if i < 256 else special_text(tok, i).encode()
    return bytes(out)


def decode(tokenizer: TokenDecoder, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """`ids` as text; special tokens are dropped, or written out when `skip_special_tokens` is false."""
    if skip_special_tokens:
        return tokenizer.decode(ids)
    if isinstance(tokenizer, ByteTokenizer):
        if any(not 0 <= i < tokenizer.vocab_size for i in ids):
            return tokenizer.decode(ids)  # raises, naming the ids
        return _byte_pieces(tokenizer, ids).decode("utf-8", errors="replace")
    return cast(_DecodesSpecial, tokenizer).decode(ids, skip_special_tokens=False)


class KeepSpecialDecoder:
    """A `TokenDecoder` that writes special tokens out (for requests with skip_special_tokens false)."""

    def __init__(self, tokenizer: TokenDecoder) -> None:
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_id

    def decode(self, ids: Sequence[int]) -> str:
        return decode(self.tokenizer, ids, skip_special_tokens=False)


def decoder_for(tokenizer: TokenDecoder, skip_special_tokens: bool) -> TokenDecoder:
    return tokenizer if skip_special_tokens else KeepSpecialDecoder(tokenizer)


def token_bytes(tokenizer: TokenDecoder, token_id: int) -> bytes:
    """One token's bytes (a byte-level token may be part of a UTF-8 character); special tokens as
    their text."""
    if isinstance(tokenizer, ByteTokenizer):
        return _byte_pieces(tokenizer, [token_id])
    return decode(tokenizer, [token_id], skip_special_tokens=False).encode()


def token_text(tokenizer: TokenDecoder, token_id: int) -> str:
    """One token as a string, as logprobs report it (a partial UTF-8 character becomes U+FFFD)."""
    return token_bytes(tokenizer, token_id).decode("utf-8", errors="replace")
