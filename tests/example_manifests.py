"""The manifests in examples/, as tests read them.

`examples/local-checkpoint.yaml` names a placeholder directory (`PLACEHOLDER`) that a user replaces
with their checkpoint; `moeplane validate` refuses it as shipped (no config.json there), which
`tests/api/test_api_cli.py` checks. Every other test that walks the examples reads that one with
`example_manifest(path, checkpoint)`, the placeholder replaced by a real checkpoint directory (the
`hf_checkpoint` fixture's), so the example goes through the builders and readers as a user's would.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from moeplane.api.runtime import EngineDocument

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
LOCAL_CHECKPOINT = EXAMPLES / "local-checkpoint.yaml"
PLACEHOLDER = "/path/to/checkpoint"
PVC_LOCATION = "pvc://models/moe/checkpoint"


def example_manifest(path: Path, checkpoint: Path | None = None) -> dict[str, Any]:
    """The example at `path` as a mapping, its placeholder checkpoint replaced by `checkpoint`."""
    obj = yaml.safe_load(path.read_text())
    weights = obj["spec"]["model"]["weights"]
    if weights.get("uri") == PLACEHOLDER:
        if checkpoint is None:
            raise ValueError(f"{path.name} names a placeholder checkpoint: pass a real one")
        obj = copy.deepcopy(obj)
        obj["spec"]["model"]["weights"]["uri"] = str(checkpoint)
    return obj


def write_example(path: Path, checkpoint: Path, folder: Path) -> Path:
    """`example_manifest(path, checkpoint)` as a file in `folder` (for commands that read files)."""
    out = folder / path.name
    out.write_text(yaml.safe_dump(example_manifest(path, checkpoint), sort_keys=False))
    return out


def pvc_document(checkpoint: Path) -> EngineDocument:
    """local-checkpoint.yaml's runtime document (its architecture read from `checkpoint`'s
    config.json) with the weights and tokenizer at `PVC_LOCATION`, as a pod reads it."""
    from moeplane.api.runtime import resolve_runtime
    from moeplane.api.spec import parse_deployment

    document = resolve_runtime(parse_deployment(example_manifest(LOCAL_CHECKPOINT, checkpoint)))
    weights = document.model.weights.model_copy(update={"uri": PVC_LOCATION})
    model = document.model.model_copy(update={"weights": weights, "tokenizer": PVC_LOCATION})
    return document.model_copy(update={"model": model})
