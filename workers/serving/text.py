"""Incremental detokenization with stop strings (no torch).

The text grows by vLLM's prefix/read-offset method: each step decodes only a short window of ids,
`ids[prefix_offset:read_offset]` and `ids[prefix_offset:]`, and releases what the new ids add to
it, unless the window ends in U+FFFD (a character whose UTF-8 bytes are split across byte-level
BPE tokens: it waits for the rest). Decoding the window from `prefix_offset` rather than from the
new ids alone keeps decoders that look at neighbouring tokens (spaces, merges) right, and costs
O(1) per step instead of a full re-decode. Special tokens are skipped by default, as in vLLM.

Of that text, what might still change is held back: a tail that could be the start of a stop
string. When a stop string appears the text is cut before it and the request stops; like OpenAI,
the stop string itself is never returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

REPLACEMENT = "\ufffd"


class TokenDecoder(Protocol):
    eos_id: int

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


@dataclass(frozen=True)
class TextDelta:
    text: str  # newly released text
    stopped: bool  # a stop string was found; the request is finished


class TextStream:
    def __init__(
        self,
        decoder: TokenDecoder,
        stop: Sequence[str] = (),
        emitted: str = "",
        skip_special_tokens: bool = True,
    ) -> None:
        """`emitted`: text already sent for these output ids (a request resumed elsewhere); the
        stream then decodes all output ids from the start and releases only what extends it."""
        self._decoder = decoder
        self._stop = tuple(stop)
        self._emitted = emitted
        self._skip = skip_special_tokens
        self._text = ""  # all text decoded so far (released or held)
        self._prefix_offset = 0
        self._read_offset = 0

    @property
    def emitted(self) -> str:
        return self._emitted

    def update(self, output_ids: Sequence[int]) -> TextDelta:
        """All output ids so far -> the text that is now safe to release."""
        pending = self._advance(output_ids, final=False)
        # A tail that ends in a split character is not committed yet, but what precedes the split
        # cannot change: release it too.
        full = self._text + pending.rstrip(REPLACEMENT)
        search_from = max(0, len(self._emitted) - max((len(s) for s in self._stop), default=0))
        cut = min((i for s in self._stop if (i := full.find(s, search_from)) >= 0), default=-1)
        if cut >= 0:
            return self._release(full[:cut], stopped=True)
        safe = len(full) - self._held_for_stop(full)
        return self._release(full[: max(safe, len(self._emitted))], stopped=False)

    def flush(self, output_ids: Sequence[int]) -> str:
        """The request ended without a stop string: release everything that is left."""
        self._advance(output_ids, final=True)
        return self._release(self._text, stopped=False).text

    def _advance(self, ids: Sequence[int], final: bool) -> str:
        """Extend `_text` by what ids past `read_offset` add (vLLM's detokenize_incrementally);
        returns the uncommitted tail (text that ends in a split character), if any."""
        if len(ids) <= self._read_offset:
            return ""
        decode = self._decoder.decode
        prefix_text = decode(ids[self._prefix_offset : self._read_offset], skip_special_tokens=self._skip)
        new_text = decode(ids[self._prefix_offset :], skip_special_tokens=self._skip)
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith(REPLACEMENT)):
            self._text += new_text[len(prefix_text) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(ids)
            return ""
        if final:  # the last ids add nothing printable (e.g. skipped specials)
            self._prefix_offset = self._read_offset = len(ids)
        return new_text[len(prefix_text) :] if new_text.startswith(prefix_text) else ""

    def _held_for_stop(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        longest = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def _release(self, text: str, stopped: bool) -> TextDelta:
        if not text.startswith(self._emitted):
            # Decoding earlier ids changed (a partial character completed differently): keep what
            # was already sent and release only what extends it.
            text = self._emitted + text[len(self._emitted) :]
        delta = text[len(self._emitted) :]
        self._emitted = text
        return TextDelta(delta, stopped)
