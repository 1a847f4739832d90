"""A one-line progress bar on a terminal, or a line every 10% when the output is a log or a pipe."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int, label: str, out: TextIO | None = None, width: int = 30) -> None:
        self.total = max(1, total)
        self.label = label
        self.out = out or sys.stderr
        self.width = width
        self.done = 0
        self.failed = 0
        self.started_s = time.monotonic()
        self._tty = self.out.isatty()
        self._last_decile = -1

    def update(self, ok: bool = True) -> None:
        self.done += 1
        self.failed += not ok
        elapsed = time.monotonic() - self.started_s
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        text = f"{self.label} [{bar}] {self.done}/{self.total}  {self.failed} errors  {elapsed:5.1f} s"
        if self._tty:
            self.out.write("\r" + text + ("\n" if self.done >= self.total else ""))
            self.out.flush()
            return
        decile = 10 * self.done // self.total
        if decile != self._last_decile:
            self._last_decile = decile
            print(text, file=self.out, flush=True)
