"""The table of bad manifests: exact messages from validation, the same verdict from the CRD's CEL
rules (a real CEL runtime) and from its openAPIV3Schema (jsonschema)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from moeplane.api.errors import SpecInvalid
from moeplane.api.presets import model_preset
from moeplane.api.spec import MoEDeployment, parse_deployment

from moeplane.codegen.crds import Dialect, deployment_crd, resource_schema
from tests.api.celeval import evaluate_rules
from tests.example_manifests import EXAMPLE_FILES, example_manifest

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
R1 = yaml.safe_load((EXAMPLES / "deepseek-r1.yaml").read_text())
TINY = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
CRD_SCHEMA = deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
STRICT_SCHEMA = resource_schema(MoEDeployment, Dialect.JSON_SCHEMA)
DELETE = object()


def patched(base: dict, changes: dict[str, Any]) -> dict:
    """`base` with dotted paths set (or removed with DELETE)."""
    out = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


def tiny_arch(**changes: Any) -> dict:
    return {**model_preset("tiny").to_wire(), **changes}


DIVISIBILITY = (
    "spec.decode.expertParallel: 256 routed + 32 redundant experts = 288 slots per layer, "
    "not divisible by expertParallel 40"
)
CM_REF = (
    "spec.eplb.loadFile: must be configmap://NAME/KEY: NAME a DNS-1123 subdomain, KEY letters, digits, "
    "'-', '_' and '.'"
)
LOAD_FORMAT = "spec.eplb.loadFile: must end in .json or .pt (the load file's format)"
DP_ONLY = (
    "spec.prefill.dataParallelAttention: {dp} must equal expertParallel ({ep}): the workers run attention "
    "data-parallel on every GPU (attention tensor parallelism is not implemented); leave it unset"
)
LOCATION_FORMS = "must be an absolute path, file:///PATH, pvc://CLAIM/PATH or hf://ORG/REPO[@REVISION]"
R1_ON_H100_EP8 = (
    "spec.prefill.expertParallel: does not fit in GPU memory: 32 routed + 1 shared experts per GPU x "
    "58 MoE layers = 84.3 GB, plus 14.6 GB replicated weights, plus minKvTokensPerGpu 4096 x 70272 B "
    "= 0.3 GB, needs 99.1 GB > 72.0 GB usable (80.0 GB h100 x gpuMemoryUtilization 0.9); raise "
    "expertParallel"
)

# id, base, changes, exact messages from parse_deployment, CEL verdict, schema verdict.
# CEL: "same" = the same messages; a list = those; [] = not a CEL rule (structural or Python-only).
# Schema: True when the openAPIV3Schema itself (no CEL) refuses the manifest; "strict" when only the
# strict JSON Schema does (the API server prunes unknown fields; `kubectl --validate=strict` refuses them).
CASES: list[tuple[str, dict, dict[str, Any], list[str], Any, bool]] = [
    ("ep-not-dividing-slots", R1, {"spec.decode.expertParallel": 40}, [DIVISIBILITY], "same", False),
    ("ep-not-node-multiple", R1, {"spec.prefill.expertParallel": 12},
     ["spec.prefill.expertParallel: 12 must be at most gpusPerNode (8) or a multiple of it"], "same", False),
    ("ep-vs-gpus-per-node-override", TINY, {"spec.hardware.gpusPerNode": 1, "spec.decode.expertParallel": 4,
                                            "spec.decode.redundantExperts": 0},
     [], [], False),
    ("dp-not-dividing-ep", R1, {"spec.prefill.dataParallelAttention": 3}, [DP_ONLY.format(dp=3, ep=32)],
     "same", False),
    ("attention-tensor-parallel", R1, {"spec.prefill.dataParallelAttention": 2},
     [DP_ONLY.format(dp=2, ep=32)], "same", False),
    ("attention-tp-vs-heads", TINY, {"spec.model.preset": DELETE,
                                     "spec.model.architecture": tiny_arch(numAttentionHeads=3),
                                     "spec.decode.dataParallelAttention": 1},
     [DP_ONLY.format(dp=1, ep=2).replace("prefill", "decode")], "same", False),
    ("dp-equal-to-ep", R1, {"spec.prefill.dataParallelAttention": 32}, [], [], False),
    ("min-above-replicas", R1, {"spec.prefill.minReplicas": 3},
     ["spec.prefill.minReplicas: 3 exceeds replicas (1)"], "same", False),
    ("max-below-replicas", R1, {"spec.decode.maxReplicas": 0, "spec.decode.minReplicas": 0},
     ["spec.decode.maxReplicas: 0 is below replicas (1)"], "same", False),
    ("ttft-zero", R1, {"spec.sla.ttftMs": 0}, ["spec.sla.ttftMs: must be greater than 0 (got 0)"], [], True),
    ("itl-negative", R1, {"spec.sla.itlMs": -5},
     ["spec.sla.itlMs: must be greater than 0 (got -5)"], [], True),
    ("sla-missing", R1, {"spec.sla": DELETE}, ["spec.sla: is required"], [], True),
    ("eplb-mode-yaml-boolean", R1, {"spec.eplb.mode": False},
     ['spec.eplb.mode: got the boolean false; YAML reads an unquoted off as false, write mode: "off" '
      "(quoted), static or online"], [], True),
    ("window-longer-than-interval", R1, {"spec.eplb.windowSeconds": 700},
     ["spec.eplb.windowSeconds: 700 s is longer than intervalSeconds (600 s)"], "same", False),
    ("window-longer-than-default-interval", TINY, {"spec.eplb": {"windowSeconds": 301}},
     ["spec.eplb.windowSeconds: 301 s is longer than intervalSeconds (300 s)"], "same", False),
    ("static-without-load-file", R1, {"spec.eplb.mode": "static"},
     ["spec.eplb.loadFile: is required when mode is static"], "same", False),
    ("load-file-configmap-bad-name", R1,
     {"spec.eplb.mode": "static", "spec.eplb.loadFile": "configmap://R1_Load/l.json"},
     ["spec.eplb.loadFile: 'configmap://R1_Load/l.json': ConfigMap name 'R1_Load' must be a DNS-1123 "
      "subdomain (lower-case letters, digits, '-' and '.', alphanumeric at both ends, at most 253 "
      "characters)"],
     [CM_REF], False),
    ("load-file-configmap-without-key", R1,
     {"spec.eplb.mode": "static", "spec.eplb.loadFile": "configmap://r1-load"},
     ["spec.eplb.loadFile: 'configmap://r1-load' must be configmap://NAME/KEY (no /KEY after the ConfigMap "
      "name)"], [CM_REF, LOAD_FORMAT], False),
    ("load-file-unknown-format", R1, {"spec.eplb.mode": "static", "spec.eplb.loadFile": "/data/r1-load.csv"},
     ["spec.eplb.loadFile: '/data/r1-load.csv' must end in .json or .pt (the load file's format)"],
     [LOAD_FORMAT], False),
    ("weights-do-not-fit", R1, {"spec.hardware.gpu": "h100", "spec.prefill.expertParallel": 8,
                                "spec.prefill.redundantExperts": 0},
     [R1_ON_H100_EP8], [], False),
    ("chunk-too-big", R1, {"spec.kvTransfer.chunkBytes": 2 * 1024 * 1024},
     ["spec.kvTransfer.chunkBytes: must be at most 1048576 (got 2097152)"], [], True),
    ("chunk-too-small", R1, {"spec.kvTransfer.chunkBytes": 1024},
     ["spec.kvTransfer.chunkBytes: must be at least 262144 (got 1024)"], [], True),
    ("typo-field", R1, {"spec.prefill.redundantExpert": 32},
     ["spec.prefill.redundantExpert: is not a known field"], [], "strict"),
    ("bad-enum", R1, {"spec.eplb.mode": "dynamic"},
     ["spec.eplb.mode: must be one of 'off', 'static' or 'online' (got 'dynamic')"], [], True),
    ("unknown-preset", R1, {"spec.model.preset": "deepseek-v4"},
     ["spec.model.preset: must be one of 'deepseek-v3', 'deepseek-r1', 'kimi-k2', 'qwen3-235b-a22b' or "
      "'tiny' (got 'deepseek-v4')"], [], True),
    ("unknown-gpu", R1, {"spec.hardware.gpu": "a100"},
     ["spec.hardware.gpu: must be one of 'h100', 'h200', 'h800', 'b200', 'gb200' or 'cpu' (got 'a100')"],
     [], True),
    ("both-preset-and-architecture", TINY, {"spec.model.architecture": tiny_arch()},
     ["spec.model: set only one of preset or architecture (both are set)"], "same", False),
    ("neither-preset-nor-architecture", TINY, {"spec.model.preset": DELETE},
     ["spec.model: set one of preset or architecture (neither is set), or a local checkpoint directory as "
      "weights.uri"], "same", False),
    ("safetensors-without-uri", TINY, {"spec.model.weights": {"format": "safetensors"}},
     ["spec.model.weights.uri: is required when format is safetensors"], "same", False),
    ("gpu-budget-too-small", R1, {"spec.planner.gpuBudgetNodes": 20},
     ["spec.planner.gpuBudgetNodes: 20 nodes x 8 = 160 GPUs cannot hold the pools' minimum: prefill 1 x EP32"
      " + decode 1 x EP144 = 176 GPUs"], "same", False),
    ("capacity-margin-over-100", R1, {"spec.planner.capacityMarginPercent": 150},
     ["spec.planner.capacityMarginPercent: must be at most 100 (got 150)"], [], True),
    ("profile-without-file", R1, {"spec.planner.perfModel": "profile"},
     ["spec.planner.profileFile: is required when perfModel is profile"], "same", False),
    ("architecture-inconsistent", TINY, {"spec.model.preset": DELETE,
                                         "spec.model.architecture": tiny_arch(numExpertsPerTok=32)},
     ["spec.model.architecture: numExpertsPerTok (32) exceeds numRoutedExperts (16)"], "same", False),
    ("architecture-groups", TINY, {"spec.model.preset": DELETE,
                                   "spec.model.architecture": tiny_arch(nGroup=3, topkGroup=4)},
     ["spec.model.architecture: numRoutedExperts (16) must divide into nGroup (3); topkGroup (4) exceeds "
      "nGroup (3)"],
     ["spec.model.architecture: numRoutedExperts (16) must divide into nGroup (3)",
      "spec.model.architecture: topkGroup (4) exceeds nGroup (3)"], False),
    ("weights-on-s3", R1, {"spec.model.weights.uri": "s3://bucket/r1"},
     ["spec.model.weights.uri: s3://bucket/r1: the scheme s3:// is not supported; use a local path, "
      "pvc://CLAIM/PATH or hf://ORG/REPO"], [f"spec.model.weights.uri: {LOCATION_FORMS}"], False),
    ("weights-relative-path", R1, {"spec.model.weights.uri": "models/r1"},
     ["spec.model.weights.uri: models/r1: a local location must be an absolute path (or file:///abs/path)"],
     [f"spec.model.weights.uri: {LOCATION_FORMS}"], False),
    ("weights-bad-claim", R1, {"spec.model.weights.uri": "pvc://Model_Weights/r1"},
     ["spec.model.weights.uri: pvc://Model_Weights/r1: the claim name 'Model_Weights' is not a valid "
      "PersistentVolumeClaim name (lowercase letters, digits, '-' and '.')"], [], False),
    ("tokenizer-bare-repo-id", R1, {"spec.model.tokenizer": "deepseek-ai/DeepSeek-R1"},
     ["spec.model.tokenizer: deepseek-ai/DeepSeek-R1: a local location must be an absolute path (or "
      "file:///abs/path)"], [f"spec.model.tokenizer: must be bytes or {LOCATION_FORMS[8:]}"], False),
    ("tokenizer-hf", R1, {"spec.model.tokenizer": "hf://deepseek-ai/DeepSeek-R1@main"}, [], [], False),
    ("byte-tokenizer-for-a-large-vocabulary", R1, {"spec.model.tokenizer": "bytes"},
     ["spec.model.tokenizer: the byte-level tokenizer (bytes, the default for random weights) needs a "
      "vocabulary of 259 to 512 ids; deepseek-r1 has 129280: name the model's tokenizer"], [], False),
    ("batch-below-seqs", TINY, {"spec.serving": {"maxNumBatchedTokens": 32}},
     ["spec.serving.maxNumBatchedTokens: 32 is below maxNumSeqs (256): every running sequence must be able "
      "to decode in one step"], "same", False),
    ("max-model-len-above-the-model", TINY, {"spec.serving.maxModelLen": 4096},
     ["spec.serving.maxModelLen: 4096 exceeds the model's maxPositionEmbeddings (2048)"], "same", False),
    ("max-model-len-above-a-rank-kv", TINY, {"spec.decode.minKvTokensPerGpu": 1024,
                                             "spec.serving.maxModelLen": 2000},
     ["spec.serving.maxModelLen: 2000 tokens do not fit the KV cache of one decode rank (1024 tokens); lower "
      "maxModelLen or give the pool more KV memory"], [], False),
    ("max-model-len-too-small", TINY, {"spec.serving.maxModelLen": 1},
     ["spec.serving.maxModelLen: must be at least 2 (got 1)"], [], True),
    ("queue-longer-than-request", TINY, {"spec.serving.queueTimeoutSeconds": 400},
     ["spec.serving.queueTimeoutSeconds: 400 s is longer than requestTimeoutSeconds (300 s)"], "same", False),
    ("negative-queue", TINY, {"spec.serving.maxQueuedRequests": -1},
     ["spec.serving.maxQueuedRequests: must be at least 0 (got -1)"], [], True),
    ("every-problem-at-once", R1, {"spec.decode.expertParallel": 40, "spec.prefill.minReplicas": 2,
                                   "spec.eplb.windowSeconds": 900},
     ["spec.prefill.minReplicas: 2 exceeds replicas (1)", DIVISIBILITY,
      "spec.eplb.windowSeconds: 900 s is longer than intervalSeconds (600 s)"], "same", False),
]
IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(("name", "base", "changes", "messages", "cel", "schema"), CASES, ids=IDS)
def test_validation_messages_are_exact(name, base, changes, messages, cel, schema) -> None:
    manifest = patched(base, changes)
    if not messages:
        parse_deployment(manifest)
        return
    with pytest.raises(SpecInvalid) as err:
        parse_deployment(manifest)
    assert err.value.messages == messages


@pytest.mark.parametrize(("name", "base", "changes", "messages", "cel", "schema"), CASES, ids=IDS)
def test_cel_rules_agree_with_validation(name, base, changes, messages, cel, schema) -> None:
    found = sorted(str(v) for v in evaluate_rules(CRD_SCHEMA, patched(base, changes)))
    expected = sorted(messages if cel == "same" else cel)
    assert found == expected


@pytest.mark.parametrize(("name", "base", "changes", "messages", "cel", "schema"), CASES, ids=IDS)
def test_openapi_schema_refuses_structural_problems(name, base, changes, messages, cel, schema) -> None:
    manifest = patched(base, changes)
    errors = list(jsonschema.Draft4Validator(CRD_SCHEMA).iter_errors(manifest))
    assert bool(errors) == (schema is True), [e.message for e in errors]
    strict = list(jsonschema.Draft7Validator(STRICT_SCHEMA).iter_errors(manifest))
    assert bool(strict) == bool(schema), [e.message for e in strict]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_examples_pass_every_check(path: Path, hf_checkpoint) -> None:
    manifest = example_manifest(path, hf_checkpoint("deepseek-v3"))
    parse_deployment(manifest)
    assert evaluate_rules(CRD_SCHEMA, manifest) == []
    jsonschema.Draft4Validator(CRD_SCHEMA).validate(manifest)
    jsonschema.Draft7Validator(STRICT_SCHEMA).validate(manifest)


def test_bad_manifests_table_covers_the_issue_rules() -> None:
    names = set(IDS)
    for rule in ("ep-not-dividing-slots", "ep-not-node-multiple", "dp-not-dividing-ep", "min-above-replicas",
                 "max-below-replicas", "ttft-zero", "window-longer-than-interval", "weights-do-not-fit"):
        assert rule in names
