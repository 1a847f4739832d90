"""Defaults of the embedded stack that the CLI needs before anything heavy is imported."""

from __future__ import annotations

from pathlib import Path

# The manifest `moeplane up` and `moeplane demo` run when given none.
DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "tiny-cpu.yaml"
