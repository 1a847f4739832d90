"""Packaging: the top-level folders map into `moeplane.*`, and `operator` stays the stdlib's."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.unit

PROBE = (
    "import sys; sys.path.insert(0, {root!r}); import operator, moeplane.operator as m; "
    "print(operator.__file__); print(next(iter(m.__path__)))"
)


def test_operator_is_stdlib_even_with_the_checkout_on_sys_path() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(root=str(ROOT))],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    stdlib_operator, ours = out
    assert not stdlib_operator.startswith(str(ROOT)), stdlib_operator
    assert ours == str(ROOT / "operator")


def test_python_dash_m_works_from_the_checkout_root() -> None:
    # `python -m` puts the working directory first on sys.path; a top-level operator/__init__.py
    # would shadow the standard library's `operator` and break the interpreter's start-up.
    assert not (ROOT / "operator" / "__init__.py").exists()
    proc = subprocess.run([sys.executable, "-m", "moeplane", "--help"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "validate" in proc.stdout


@pytest.mark.parametrize("pkg", ["api", "operator", "planner", "workers", "protos"])
def test_subpackages_map_to_top_level_folders(pkg: str) -> None:
    mod = importlib.import_module(f"moeplane.{pkg}")
    assert Path(next(iter(mod.__path__))) == ROOT / pkg


_API_PROBE = """
import importlib, pkgutil, sys
import moeplane.api as api
for info in pkgutil.iter_modules(api.__path__):
    importlib.import_module(f"moeplane.api.{info.name}")
print(",".join(sorted(m for m in sys.modules if m.startswith(("moeplane.operator", "moeplane.workers",
                                                             "moeplane.planner", "torch")))))
"""


def test_the_api_imports_no_other_component() -> None:
    # The typed models are the bottom layer: generators that also need the operator's RBAC live in
    # moeplane.codegen, so importing every API module pulls in no operator, worker, planner or torch.
    out = subprocess.run([sys.executable, "-c", _API_PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", out.stdout
