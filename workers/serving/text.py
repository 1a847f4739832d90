"""Incremental detokenization with stop strings (no torch).

Each step the output ids so far are decoded and the new text is released, except what might
still change: a trailing partial UTF-8 character (decoded as U+FFFD), and a tail that could be the
start of a stop string. When a stop string appears the text is cut before it and the request
stops; like OpenAI, the stop string itself is never returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

REPLACEMENT = "\ufffd"


class TokenDecoder(Protocol):
    eos_id: int

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class TextDelta:
    text: str  # newly released text
    stopped: bool  # a stop string was found; the request is finished


class TextStream:
    def __init__(self, decoder: TokenDecoder, stop: Sequence[str] = (), emitted: str = "") -> None:
        """`emitted`: text already sent for these output ids (a request resumed elsewhere)."""
        self._decoder = decoder
        self._stop = tuple(stop)
        self._emitted = emitted

    @property
    def emitted(self) -> str:
        return self._emitted

    def update(self, output_ids: Sequence[int]) -> TextDelta:
        """All output ids so far -> the text that is now safe to release."""
        full = self._decoder.decode(output_ids)
        search_from = max(0, len(self._emitted) - max((len(s) for s in self._stop), default=0))
        cut = min((i for s in self._stop if (i := full.find(s, search_from)) >= 0), default=-1)
        if cut >= 0:
            return self._release(full[:cut], stopped=True)
        safe = len(full)
        while safe > len(self._emitted) and full[safe - 1] == REPLACEMENT:
            safe -= 1
        safe -= self._held_for_stop(full[:safe])
        return self._release(full[: max(safe, len(self._emitted))], stopped=False)

    def flush(self, output_ids: Sequence[int]) -> str:
        """The request ended without a stop string: release everything that is left."""
        full = self._decoder.decode(output_ids)
        return self._release(full, stopped=False).text

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
