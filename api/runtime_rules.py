"""The rules a runtime document must keep: one function per section, applied by the readers
(`runtime_io.read_engine_document`) and by `moeplane validate` (`validation.validate_spec`) alike.

Each problem names two places: the document's field (what a reader reports, e.g.
`pools.decode.attentionDpSize`) and the manifest's field that sets it (what validation reports,
e.g. `spec.decode.dataParallelAttention`), with one message for both. A few checks are about
the document alone (derived fields that must agree, as a hand-edited engine.json may break
them): they have no manifest field, since `resolve_runtime` never produces them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moeplane.api.arch import ModelArch
from moeplane.api.enums import EplbAlgorithm, EplbMode, Role, WeightsFormat
from moeplane.api.errors import Problem
from moeplane.api.layout import GroupLayout
from moeplane.api.locations import LocationError, parse_location
from moeplane.api.runtime import BYTE_TOKENIZER, EngineDocument, ServingRuntime, kv_blocks_per_rank
from moeplane.api.spec import EplbSpec, WeightsSpec

# The byte-level tokenizer's ids: 256 bytes, then BOS, EOS and PAD (workers/model/tokenizer.py);
# a larger vocabulary is a real tokenizer's.
BYTE_VOCAB_MIN, BYTE_VOCAB_MAX = 259, 512


@dataclass(frozen=True)
class RuntimeProblem:
    """One broken rule: the document's field, the manifest's field (None: document-only)."""

    path: str
    spec_path: str | None
    message: str

    def in_document(self) -> Problem:
        return Problem(self.path, self.message)

    def in_spec(self) -> Problem:
        assert self.spec_path is not None, f"{self.path} has no manifest field"
        return Problem(self.spec_path, self.message)


def weights_problems(weights: WeightsSpec) -> list[RuntimeProblem]:
    at = ("model.weights.uri", "spec.model.weights.uri")
    if weights.uri is None:
        if weights.format is WeightsFormat.SAFETENSORS:
            return [RuntimeProblem(*at, "is required when format is safetensors")]
        return []
    try:
        parse_location(weights.uri)
    except LocationError as exc:
        return [RuntimeProblem(*at, str(exc))]
    return []


def tokenizer_problems(tokenizer: str, weights: WeightsSpec, arch: ModelArch) -> list[RuntimeProblem]:
    at = ("model.tokenizer", "spec.model.tokenizer")
    if tokenizer == BYTE_TOKENIZER:
        if BYTE_VOCAB_MIN <= arch.vocab_size <= BYTE_VOCAB_MAX:
            return []
        return [RuntimeProblem(*at, (
            f"the byte-level tokenizer ({BYTE_TOKENIZER}, the default for random weights) needs a "
            f"vocabulary of {BYTE_VOCAB_MIN} to {BYTE_VOCAB_MAX} ids; {arch.name} has "
            f"{arch.vocab_size}: name the model's tokenizer"
        ))]
    if tokenizer == weights.uri:
        return []  # the weights' location, which weights_problems checks
    try:
        parse_location(tokenizer)
    except LocationError as exc:
        return [RuntimeProblem(*at, str(exc))]
    return []


def serving_problems(serving: ServingRuntime, arch: ModelArch) -> list[RuntimeProblem]:
    problems = []
    if serving.max_num_batched_tokens < serving.max_num_seqs:
        problems.append(RuntimeProblem(
            "serving.maxNumBatchedTokens", "spec.serving.maxNumBatchedTokens",
            f"{serving.max_num_batched_tokens} is below maxNumSeqs ({serving.max_num_seqs}): every "
            "running sequence must be able to decode in one step",
        ))
    if serving.max_model_len < 2:
        problems.append(RuntimeProblem(
            "serving.maxModelLen", "spec.serving.maxModelLen",
            f"{serving.max_model_len} leaves no room for a prompt token and an output token (the "
            f"model's maxPositionEmbeddings is {arch.max_position_embeddings}); set at least 2",
        ))
    if serving.max_model_len > arch.max_position_embeddings:
        problems.append(RuntimeProblem(
            "serving.maxModelLen", "spec.serving.maxModelLen",
            f"{serving.max_model_len} exceeds the model's maxPositionEmbeddings "
            f"({arch.max_position_embeddings})",
        ))
    if serving.queue_timeout_seconds > serving.request_timeout_seconds:
        problems.append(RuntimeProblem(
            "serving.queueTimeoutSeconds", "spec.serving.queueTimeoutSeconds",
            f"{serving.queue_timeout_seconds:g} s is longer than requestTimeoutSeconds "
            f"({serving.request_timeout_seconds:g} s)",
        ))
    return problems


def pool_problems(role: Role, layout: GroupLayout, arch: ModelArch) -> list[RuntimeProblem]:
    """The rules of one pool's group layout: the manifest's (expertParallel, dataParallelAttention),
    then, when those hold, the document's own consistency."""
    doc, spec = f"pools.{role.value}", f"spec.{role.value}"
    ep, gpn, slots = layout.expert_parallel, layout.gpus_per_node, layout.expert_slots
    problems = []
    if ep > gpn and ep % gpn:
        problems.append(RuntimeProblem(
            f"{doc}.expertParallel", f"{spec}.expertParallel",
            f"{ep} must be at most gpusPerNode ({gpn}) or a multiple of it",
        ))
    if slots % ep:
        redundant = slots - arch.num_routed_experts
        problems.append(RuntimeProblem(
            f"{doc}.expertSlots", f"{spec}.expertParallel",
            f"{arch.num_routed_experts} routed + {redundant} redundant experts = {slots} slots per "
            f"layer, not divisible by expertParallel {ep}",
        ))
    if layout.attention_dp_size != ep:
        problems.append(RuntimeProblem(
            f"{doc}.attentionDpSize", f"{spec}.dataParallelAttention",
            f"{layout.attention_dp_size} must equal expertParallel ({ep}): the workers run attention "
            "data-parallel on every GPU (attention tensor parallelism is not implemented); leave it unset",
        ))
    return problems or _layout_integrity(doc, role, layout, arch)


def kv_fit_problems(role: Role, layout: GroupLayout, serving: ServingRuntime) -> list[RuntimeProblem]:
    """A sequence lives on one rank (data-parallel attention): its KV cache must hold maxModelLen."""
    kv_tokens = kv_blocks_per_rank(layout, serving.block_size_tokens) * serving.block_size_tokens
    if serving.max_model_len <= kv_tokens:
        return []
    return [RuntimeProblem(
        f"pools.{role.value}.kvTokensPerGpu", "spec.serving.maxModelLen",
        f"{serving.max_model_len} tokens do not fit the KV cache of one {role.value} rank "
        f"({kv_tokens} tokens); lower maxModelLen or give the pool more KV memory",
    )]


def _layout_integrity(doc: str, role: Role, layout: GroupLayout, arch: ModelArch) -> list[RuntimeProblem]:
    """Derived fields that `resolve_group` always makes agree (document-only checks)."""
    if layout.role is not role:
        return [RuntimeProblem(f"{doc}.role", None, f"is {layout.role.value}: the layout of another pool")]
    ep = layout.expert_parallel
    expected = {
        "gpusPerGroup": (layout.gpus_per_group, ep),
        "nodesPerGroup": (layout.nodes_per_group, math.ceil(ep / layout.gpus_per_node)),
        "routedExpertsPerGpu": (layout.routed_experts_per_gpu, layout.expert_slots // ep),
        "attentionTpSize": (layout.attention_tp_size, 1),
    }
    problems = [
        RuntimeProblem(f"{doc}.{name}", None, f"is {got}, expected {want} for expertParallel {ep} on "
                       f"{layout.gpus_per_node} GPUs per node")
        for name, (got, want) in expected.items()
        if got != want
    ]
    if layout.expert_slots < arch.num_routed_experts:
        problems.append(RuntimeProblem(
            f"{doc}.expertSlots", None,
            f"{layout.expert_slots} slots cannot hold the model's {arch.num_routed_experts} routed experts",
        ))
    return problems


def eplb_problems(eplb: EplbSpec) -> list[RuntimeProblem]:
    problems = []
    if eplb.window_seconds > eplb.interval_seconds:
        problems.append(RuntimeProblem(
            "eplb.windowSeconds", "spec.eplb.windowSeconds",
            f"{eplb.window_seconds:g} s is longer than intervalSeconds ({eplb.interval_seconds:g} s)",
        ))
    if eplb.mode is EplbMode.STATIC and eplb.load_file is None:
        problems.append(
            RuntimeProblem("eplb.loadFile", "spec.eplb.loadFile", "is required when mode is static")
        )
    return problems


def eplb_pool_problems(
    role: Role, layout: GroupLayout, arch: ModelArch, eplb: EplbSpec
) -> list[RuntimeProblem]:
    """DeepSeek's hierarchical algorithm pins expert groups to nodes: they must divide among them."""
    nodes = layout.nodes_per_group
    hierarchical = eplb.mode is not EplbMode.OFF and eplb.algorithm is EplbAlgorithm.HIERARCHICAL
    if not hierarchical or arch.n_group % nodes == 0:
        return []
    return [RuntimeProblem(
        "eplb.algorithm", "spec.eplb.algorithm",
        f"hierarchical needs the model's {arch.n_group} expert groups to divide among the {role.value} "
        f"pool's {nodes} nodes per EP group; use auto or global",
    )]


def runtime_problems(doc: EngineDocument) -> list[RuntimeProblem]:
    """Every rule `doc` breaks, in the document's field order."""
    arch = doc.model.architecture
    problems = weights_problems(doc.model.weights)
    problems += tokenizer_problems(doc.model.tokenizer, doc.model.weights, arch)
    problems += serving_problems(doc.serving, arch)
    for role in Role:
        if role in doc.pools:
            layout = doc.pools[role]
            problems += pool_problems(role, layout, arch) or kv_fit_problems(
                role, layout, doc.serving
            )
    problems += eplb_problems(doc.eplb)
    for role in Role:
        if role in doc.pools:
            problems += eplb_pool_problems(role, doc.pools[role], arch, doc.eplb)
    return problems
