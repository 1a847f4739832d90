"""The tokenizer interface the engines and the frontend use, its two implementations, and the loader.

- `HFTokenizer` (`hf_tokenizer.py`): a checkpoint's tokenizer.json + tokenizer_config.json, its
  chat template and generation_config.json's EOS ids; equal to transformers' fast tokenizer.
- `ByteTokenizer`: UTF-8 bytes for the `tiny` preset, with the plain `<|role|>` chat form.

`load_tokenizer(location, arch)` picks one: `"bytes"` (or None) is the byte tokenizer, which
fits only a byte-sized vocabulary; anything else is a checkpoint location (local path, pvc://,
hf://) resolved on this node. The frontend and every rank of a deployment call it with the runtime
document's `model.tokenizer`, so they tokenize alike. Decoding skips special tokens by default, as
vLLM does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from moeplane.api.arch import ModelArch

BYTES = "bytes"


class TokenizerError(ValueError):
    """No tokenizer fits the model, or ids outside its vocabulary."""


@runtime_checkable
class Tokenizer(Protocol):
    """What serving needs from a tokenizer.

    Attributes:
        vocab_size: ids the tokenizer knows (the model may have more rows).
        eos_id: the primary end-of-sequence id; `eos_ids` every id that ends a sequence.
        bos_id / pad_id: None when the tokenizer has none.
    """

    vocab_size: int
    eos_id: int
    eos_ids: frozenset[int]
    bos_id: int | None
    pad_id: int | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]: ...

    def token_text(self, token_id: int) -> str: ...

    def is_special(self, token_id: int) -> bool: ...

    def apply_chat_template(
        self, messages: Sequence[Any], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str: ...

    def encode_chat(
        self, messages: Sequence[Any], add_generation_prompt: bool = True, add_special_tokens: bool = False,
        **kwargs: Any,
    ) -> list[int]:
        """The chat prompt's ids: the rendered template, whose text writes the special tokens
        (transformers' `apply_chat_template(tokenize=True)`); `add_special_tokens` adds the
        tokenizer's own on top, as vLLM's chat `add_special_tokens`."""
        ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; BOS, EOS and PAD follow. Decoding drops special ids by default."""

    def __init__(self, vocab_size: int = 260) -> None:
        if vocab_size < 259:
            raise TokenizerError(f"a byte-level vocabulary needs >= 259 ids, got {vocab_size}")
        self.vocab_size = vocab_size
        self.bos_id: int | None = 256
        self.eos_id = 257
        self.pad_id: int | None = 258
        self.eos_ids = frozenset({self.eos_id})
        self._names = {256: "<|bos|>", 257: "<|eos|>", 258: "<|pad|>"}

    def encode(self, text: str, add_special_tokens: bool = True, *, add_bos: bool | None = None) -> list[int]:
        """UTF-8 bytes, after BOS when `add_special_tokens` (`add_bos` is its older name)."""
        ids = list(text.encode("utf-8"))
        bos = add_special_tokens if add_bos is None else add_bos
        return [256, *ids] if bos else ids  # 256: BOS

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"ids {bad[:5]} are outside the vocabulary of {self.vocab_size}")
        if skip_special_tokens:
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        out, run = [], bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            out.append(self._names.get(i, f"<|{i}|>"))
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """A byte that is a character on its own is that character; others read `bytes:\\xNN`."""
        return [self.token_text(int(i)) for i in ids]

    def token_text(self, token_id: int) -> str:
        if token_id >= 256:
            return self._names.get(token_id, f"<|{token_id}|>")
        return chr(token_id) if token_id < 128 else f"bytes:\\x{token_id:02x}"

    def is_special(self, token_id: int) -> bool:
        return token_id >= 256

    def apply_chat_template(
        self, messages: Sequence[Any], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Each message as `<|role|>\\n{content}\\n`, then `<|assistant|>\\n` for the reply."""
        parts = []
        for m in messages:
            if isinstance(m, Mapping):
                role, content = m.get("role"), m.get("content")
            else:
                role, content = m.role, m.content
            parts.append(f"<|{getattr(role, 'value', role)}|>\n{content or ''}\n")
        if add_generation_prompt:
            parts.append("<|assistant|>\n")
        return "".join(parts)

    def encode_chat(
        self, messages: Sequence[Any], add_generation_prompt: bool = True, add_special_tokens: bool = False,
        **kwargs: Any,
    ) -> list[int]:
        """BOS, then the plain form's bytes: the plain template has no text for BOS, so the ids
        carry it as a checkpoint's template writes its own; `add_special_tokens` adds another."""
        text = self.apply_chat_template(messages, add_generation_prompt, **kwargs)
        ids = self.encode(text, add_special_tokens=True)
        return [256, *ids] if add_special_tokens else ids  # 256: BOS


def load_tokenizer(location: str | None, arch: ModelArch | None = None) -> Tokenizer:
    """The tokenizer at `location` ("bytes", a local path, pvc:// or hf://), resolved on this node.

    `None` or "bytes" is the byte tokenizer, sized to `arch`'s vocabulary, which must be
    byte-sized (the `tiny` preset). A checkpoint's tokenizer with more ids than `arch`'s
    vocabulary is refused (its ids would not embed). Errors name the location (CheckpointError,
    HFTokenizerError, TokenizerError: all ValueError).
    """
    if location is None or location == BYTES:
        if arch is None:
            return ByteTokenizer()
        if arch.vocab_size > 512:
            raise TokenizerError(
                f"{arch.name} has a {arch.vocab_size}-token vocabulary, which the byte-level tokenizer "
                "(bytes) cannot serve: name the model's own tokenizer (spec.model.tokenizer)"
            )
        return ByteTokenizer(arch.vocab_size)
    from moeplane.workers.model.checkpoint import resolve_checkpoint
    from moeplane.workers.model.hf_tokenizer import HFTokenizer

    tokenizer = HFTokenizer(resolve_checkpoint(location))
    if arch is not None and tokenizer.vocab_size > arch.vocab_size:
        raise TokenizerError(
            f"{location}: the tokenizer has {tokenizer.vocab_size} ids but {arch.name} embeds only "
            f"{arch.vocab_size}"
        )
    return tokenizer
