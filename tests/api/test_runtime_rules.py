"""Every rule a runtime reader applies is applied by `moeplane validate` too, with the same message.

Table-driven: each row breaks one rule of `api/runtime_rules.py` in a manifest. Validation refuses
the manifest naming the manifest's field; the same manifest resolved without validation gives a
document that `read_engine_document` (the reader of `moeplane pool` and `moeplane frontend`)
refuses naming the document's field, with the same message. The table covers every rule function.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from moeplane.api import runtime_rules
from moeplane.api.enums import Role
from moeplane.api.errors import SpecInvalid
from moeplane.api.runtime import resolve_runtime
from moeplane.api.runtime_io import EngineDocumentError, read_engine_document
from moeplane.api.spec import parse_deployment

from tests.example_manifests import EXAMPLE_FILES, example_manifest

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
R1 = yaml.safe_load((EXAMPLES / "deepseek-r1.yaml").read_text())
TINY = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())


def patched(base: dict, changes: dict[str, Any]) -> dict:
    out = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


# rule function, base, changes, manifest field, document field, message
RULES: list[tuple[str, dict, dict[str, Any], str, str, str]] = [
    ("weights_problems", TINY, {"spec.model.weights": {"format": "safetensors"}},
     "spec.model.weights.uri", "model.weights.uri", "is required when format is safetensors"),
    ("weights_problems", R1, {"spec.model.weights.uri": "s3://bucket/r1"},
     "spec.model.weights.uri", "model.weights.uri",
     "s3://bucket/r1: the scheme s3:// is not supported; use a local path, pvc://CLAIM/PATH or hf://ORG/REPO"),
    ("tokenizer_problems", R1, {"spec.model.tokenizer": "deepseek-ai/DeepSeek-R1"},
     "spec.model.tokenizer", "model.tokenizer",
     "deepseek-ai/DeepSeek-R1: a local location must be an absolute path (or file:///abs/path)"),
    ("tokenizer_problems", R1, {"spec.model.weights": {"format": "random"}},
     "spec.model.tokenizer", "model.tokenizer",
     "the byte-level tokenizer (bytes, the default for random weights) needs a vocabulary of 259 to 512 "
     "ids; deepseek-r1 has 129280: name the model's tokenizer"),
    ("serving_problems", TINY, {"spec.serving.maxNumBatchedTokens": 16},
     "spec.serving.maxNumBatchedTokens", "serving.maxNumBatchedTokens",
     "16 is below maxNumSeqs (64): every running sequence must be able to decode in one step"),
    ("serving_problems", TINY, {"spec.serving.maxModelLen": 4096},
     "spec.serving.maxModelLen", "serving.maxModelLen",
     "4096 exceeds the model's maxPositionEmbeddings (2048)"),
    ("serving_problems", TINY, {"spec.serving.queueTimeoutSeconds": 301},
     "spec.serving.queueTimeoutSeconds", "serving.queueTimeoutSeconds",
     "301 s is longer than requestTimeoutSeconds (300 s)"),
    ("pool_problems", R1, {"spec.prefill.expertParallel": 12},
     "spec.prefill.expertParallel", "pools.prefill.expertParallel",
     "12 must be at most gpusPerNode (8) or a multiple of it"),
    ("pool_problems", R1, {"spec.decode.expertParallel": 40},
     "spec.decode.expertParallel", "pools.decode.expertSlots",
     "256 routed + 32 redundant experts = 288 slots per layer, not divisible by expertParallel 40"),
    ("pool_problems", R1, {"spec.decode.dataParallelAttention": 72},
     "spec.decode.dataParallelAttention", "pools.decode.attentionDpSize",
     "72 must equal expertParallel (144): the workers run attention data-parallel on every GPU (attention "
     "tensor parallelism is not implemented); leave it unset"),
    ("kv_fit_problems", TINY, {"spec.prefill.minKvTokensPerGpu": 1024},
     "spec.serving.maxModelLen", "pools.prefill.kvTokensPerGpu",
     "2048 tokens do not fit the KV cache of one prefill rank (1024 tokens); lower maxModelLen or give the "
     "pool more KV memory"),
    ("eplb_problems", TINY, {"spec.eplb.windowSeconds": 31},
     "spec.eplb.windowSeconds", "eplb.windowSeconds", "31 s is longer than intervalSeconds (30 s)"),
    ("eplb_problems", TINY, {"spec.eplb.mode": "static"},
     "spec.eplb.loadFile", "eplb.loadFile", "is required when mode is static"),
    ("eplb_pool_problems", R1, {"spec.eplb.algorithm": "hierarchical"},
     "spec.eplb.algorithm", "eplb.algorithm",
     "hierarchical needs the model's 8 expert groups to divide among the decode pool's 18 nodes per EP "
     "group; use auto or global"),
]
IDS = [f"{rule}:{doc_field}" for rule, _, _, _, doc_field, _ in RULES]


@pytest.mark.parametrize(("rule", "base", "changes", "spec_field", "doc_field", "message"), RULES, ids=IDS)
def test_validate_refuses_what_the_reader_refuses_with_the_same_message(
    tmp_path: Path, rule: str, base: dict, changes: dict, spec_field: str, doc_field: str, message: str
) -> None:
    manifest = patched(base, changes)
    with pytest.raises(SpecInvalid) as refused:
        parse_deployment(manifest)
    assert f"{spec_field}: {message}" in refused.value.messages

    # The same manifest, resolved as if nothing had checked it, is a document the reader refuses.
    document = resolve_runtime(parse_deployment(manifest, validate=False))
    engine = tmp_path / "engine.json"
    engine.write_text(json.dumps(document.to_wire()))
    with pytest.raises(EngineDocumentError) as read:
        read_engine_document(engine)
    assert str(read.value).startswith(f"engine config {engine}: ")
    assert f"{doc_field}: {message}" in str(read.value)


def test_the_table_covers_every_rule() -> None:
    rules = {
        name for name, fn in inspect.getmembers(runtime_rules, inspect.isfunction)
        if name.endswith("_problems") and fn.__module__ == runtime_rules.__name__
    } - {"runtime_problems"}
    assert rules == {row[0] for row in RULES}


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_resolves_to_a_document_every_reader_accepts(
    tmp_path: Path, path: Path, hf_checkpoint
) -> None:
    document = resolve_runtime(parse_deployment(example_manifest(path, hf_checkpoint("deepseek-v3"))))
    assert runtime_rules.runtime_problems(document) == []
    engine = tmp_path / "engine.json"
    engine.write_text(json.dumps(document.to_wire()))
    assert read_engine_document(engine) == document
    for role in Role:  # as a pool reads it: the file without pools, the layout in its env
        engine.write_text(json.dumps(document.without_pools().to_wire()))
        layout = json.dumps(document.pool(role).to_wire())
        assert read_engine_document(engine, role=role, pool_layout=layout).pool(role) == document.pool(role)
