"""The session-cached `hf_checkpoint` fixture (registered in tests/conftest.py): small checkpoints
built by transformers (see tests/checkpoints.py), imported lazily so suites that never ask for one
do not load torch or transformers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """kind -> a checkpoint directory of that kind ("...-fp8": its FP8-quantised copy), built once."""
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        from tests.checkpoints import build_checkpoint, quantize_fp8

        if kind not in built:
            if kind.endswith("-fp8"):
                base = get(kind.removesuffix("-fp8"))
                built[kind] = quantize_fp8(base, tmp_path_factory.mktemp(kind))
            else:
                built[kind] = build_checkpoint(kind, tmp_path_factory.mktemp(kind)).path
        return built[kind]

    return get
