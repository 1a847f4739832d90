"""The tokenizer interface the engines use, and the byte-level tokenizer of the `tiny` preset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from moeplane.api.arch import ModelArch


class TokenizerError(ValueError):
    """No tokenizer fits the model, or ids outside its vocabulary."""


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str, add_bos: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; BOS, EOS and PAD follow. Decoding drops special ids."""

    def __init__(self, vocab_size: int = 260) -> None:
        if vocab_size < 259:
            raise TokenizerError(f"a byte-level vocabulary needs >= 259 ids, got {vocab_size}")
        self.vocab_size = vocab_size
        self.bos_id, self.eos_id, self.pad_id = 256, 257, 258

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"ids {bad[:5]} are outside the vocabulary of {self.vocab_size}")
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def tokenizer_for(arch: ModelArch) -> Tokenizer:
    """The byte-level tokenizer for byte-sized vocabularies (the `tiny` preset)."""
    if arch.vocab_size > 512:
        raise TokenizerError(
            f"{arch.name} has a {arch.vocab_size}-token vocabulary; load its own tokenizer "
            "(only byte-level vocabularies are built in)"
        )
    return ByteTokenizer(arch.vocab_size)
