"""Per-token strings and bytes, as logprobs report them (no torch).

vLLM reports each token's decoded text (`token`) and, in chat, its UTF-8 `bytes`. The byte
tokenizer of `tiny` knows each byte id's exact byte; other tokenizers give the token's decoded text
(`Tokenizer.token_text`), whose bytes are reported (a byte-level BPE token holding part of a
multi-byte character decodes to U+FFFD there, as in vLLM's per-token detokenisation).
"""

from __future__ import annotations

from moeplane.workers.model.tokenizer import ByteTokenizer, Tokenizer


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """One token as a string (a partial UTF-8 character becomes U+FFFD)."""
    if isinstance(tokenizer, ByteTokenizer) and 0 <= token_id < 256:
        return bytes([token_id]).decode("utf-8", errors="replace")
    return tokenizer.token_text(token_id)


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes:
    """One token's bytes (a byte of the byte tokenizer may be part of a UTF-8 character)."""
    if isinstance(tokenizer, ByteTokenizer) and 0 <= token_id < 256:
        return bytes([token_id])
    return tokenizer.token_text(token_id).encode()
