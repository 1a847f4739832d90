"""Packaging: the top-level folders map into `moeplane.*`, and `operator` stays the stdlib's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.unit

PROBE = "import operator, moeplane.operator as m; print(operator.__file__); print(m.__file__)"


def test_operator_is_stdlib_even_from_repo_root() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    stdlib_operator, ours = out
    assert not stdlib_operator.startswith(str(ROOT)), stdlib_operator
    assert ours == str(ROOT / "operator" / "__init__.py")


@pytest.mark.parametrize("pkg", ["api", "operator", "planner", "workers", "protos"])
def test_subpackages_map_to_top_level_folders(pkg: str) -> None:
    import importlib

    mod = importlib.import_module(f"moeplane.{pkg}")
    assert Path(mod.__file__ or "").parent == ROOT / pkg
