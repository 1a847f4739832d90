"""CEL (`x-kubernetes-validations`) versions of the cross-field rules, for the generated CRDs.

The API server then refuses the same manifests `validation.py` does, with the same messages
(`messageExpression` rebuilds the numbers). Left to `validation.py` only: the memory fit and the
KV-cache fit of maxModelLen (float sums over the whole architecture), and the hierarchical EPLB
algorithm's expert groups per node. Locations are checked here
by their form's prefix only; `locations.parse_location` checks the rest.

Rules must not depend on the API server having applied defaults first, so optional fields are
read through `_get`, which falls back to the model's own default. Preset constants (routed
experts per model, GPUs per node per GPU type) enter the rules as CEL map literals built from
the preset tables, so they cannot drift from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from moeplane.api.arch import ModelArch
from moeplane.api.base import ApiModel
from moeplane.api.enums import EplbMode, PerfModelSource, Role, WeightsFormat
from moeplane.api.hardware import HARDWARE_PRESETS
from moeplane.api.presets import MODEL_PRESETS
from moeplane.api.runtime import BYTE_TOKENIZER
from moeplane.api.spec import (
    EplbSpec,
    ModelSpec,
    MoEDeploymentSpec,
    PlannerSpec,
    PoolSpec,
    ServingSpec,
    WeightsSpec,
)
from pydantic import BaseModel


@dataclass(frozen=True)
class CelRule:
    """One `x-kubernetes-validations` entry, evaluated with `self` bound to the object it sits on."""

    rule: str
    message: str
    message_expression: str | None = None
    field_path: str | None = None  # Relative to `self`, e.g. `.decode.expertParallel`.
    reason: str = "FieldValueInvalid"  # Or FieldValueRequired, as Kubernetes spells them.

    def to_k8s(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.message_expression:
            out["messageExpression"] = self.message_expression
        if self.field_path:
            out["fieldPath"] = self.field_path
            out["reason"] = self.reason
        return out


def _lit(value: object) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _get(model: type[ApiModel], attr: str, base: str = "self") -> str:
    """CEL reading `attr` of an object of `model` at `base`, with the model's default if unset."""
    field = model.model_fields[attr]
    wire = field.alias or attr
    path = f"{base}.{wire}"
    if field.is_required():
        return path
    return f"(has({path}) ? {path} : {_lit(field.get_default(call_default_factory=True))})"


def _map(table: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{_lit(k)}: {v}" for k, v in table.items()) + "}"


_ROUTED_BY_PRESET = _map({p.value: a.num_routed_experts for p, a in MODEL_PRESETS.items()})
_GPN_BY_PRESET = _map({p.value: h.gpus_per_node for p, h in HARDWARE_PRESETS.items()})
# Guards: an unknown preset is refused by the schema's enum; the rules then stay quiet rather
# than fail to evaluate.
_MODEL_KNOWN = (
    f"(has(self.model.architecture) || (has(self.model.preset) && self.model.preset in {_ROUTED_BY_PRESET}))"
)
_GPU_KNOWN = f"(has(self.hardware.gpusPerNode) || self.hardware.gpu in {_GPN_BY_PRESET})"
_ROUTED = (
    "(has(self.model.architecture) ? self.model.architecture.numRoutedExperts : "
    f"{_ROUTED_BY_PRESET}[self.model.preset])"
)
_GPN = f"(has(self.hardware.gpusPerNode) ? self.hardware.gpusPerNode : {_GPN_BY_PRESET}[self.hardware.gpu])"


def _pool_rules(role: Role) -> list[CelRule]:
    base = f"self.{role.value}"
    ep = f"{base}.expertParallel"
    redundant = _get(PoolSpec, "redundant_experts", base)
    slots = f"({_ROUTED} + {redundant})"
    return [
        CelRule(
            rule=f"!{_GPU_KNOWN} || {ep} <= {_GPN} || {ep} % {_GPN} == 0",
            message="expertParallel must be at most gpusPerNode or a multiple of it",
            message_expression=(
                f"string({ep}) + ' must be at most gpusPerNode (' + string({_GPN}) + "
                "') or a multiple of it'"
            ),
            field_path=f".{role.value}.expertParallel",
        ),
        CelRule(
            rule=f"!{_MODEL_KNOWN} || {slots} % {ep} == 0",
            message="(routed experts + redundantExperts) must be divisible by expertParallel",
            message_expression=(
                f"string({_ROUTED}) + ' routed + ' + string({redundant}) + ' redundant experts = ' + "
                f"string({slots}) + ' slots per layer, not divisible by expertParallel ' + string({ep})"
            ),
            field_path=f".{role.value}.expertParallel",
        ),
    ]


def _budget_rule() -> CelRule:
    budget = "self.planner.gpuBudgetNodes"
    terms = {
        role: (_get(PoolSpec, "min_replicas", f"self.{role.value}"), f"self.{role.value}.expertParallel")
        for role in Role
    }
    need = " + ".join(f"{m} * {ep}" for m, ep in terms.values())
    (pm, pep), (dm, dep) = terms[Role.PREFILL], terms[Role.DECODE]
    return CelRule(
        rule=f"!has(self.planner) || !has({budget}) || !{_GPU_KNOWN} || {need} <= {budget} * {_GPN}",
        message="gpuBudgetNodes cannot hold the pools' minReplicas",
        message_expression=(
            f"string({budget}) + ' nodes x ' + string({_GPN}) + ' = ' + string({budget} * {_GPN}) + "
            f"' GPUs cannot hold the pools\\' minimum: prefill ' + string({pm}) + ' x EP' + string({pep}) + "
            f"' + decode ' + string({dm}) + ' x EP' + string({dep}) + ' = ' + string({need}) + ' GPUs'"
        ),
        field_path=".planner.gpuBudgetNodes",
    )


def _replica_rules() -> list[CelRule]:
    replicas = _get(PoolSpec, "replicas")
    minimum = _get(PoolSpec, "min_replicas")
    dp, ep = "self.dataParallelAttention", "self.expertParallel"
    return [
        CelRule(
            rule=f"{minimum} <= {replicas}",
            message="minReplicas must not exceed replicas",
            message_expression=f"string({minimum}) + ' exceeds replicas (' + string({replicas}) + ')'",
            field_path=".minReplicas",
        ),
        CelRule(
            rule=f"!has(self.maxReplicas) || {replicas} <= self.maxReplicas",
            message="maxReplicas must not be below replicas",
            message_expression=(
                f"string(self.maxReplicas) + ' is below replicas (' + string({replicas}) + ')'"
            ),
            field_path=".maxReplicas",
        ),
        CelRule(
            rule=f"!has({dp}) || {dp} == {ep}",
            message="dataParallelAttention must equal expertParallel (attention runs data-parallel)",
            message_expression=(
                f"string({dp}) + ' must equal expertParallel (' + string({ep}) + '): the workers run "
                "attention data-parallel on every GPU (attention tensor parallelism is not implemented); "
                "leave it unset'"
            ),
            field_path=".dataParallelAttention",
        ),
    ]


def _eplb_rules() -> list[CelRule]:
    window, interval = _get(EplbSpec, "window_seconds"), _get(EplbSpec, "interval_seconds")
    return [
        CelRule(
            rule=f"{window} <= {interval}",
            message="windowSeconds must not be longer than intervalSeconds",
            message_expression=(
                f"string({window}) + ' s is longer than intervalSeconds (' + string({interval}) + ' s)'"
            ),
            field_path=".windowSeconds",
        ),
        CelRule(
            rule=f"{_get(EplbSpec, 'mode')} != {_lit(EplbMode.STATIC)} || has(self.loadFile)",
            message="is required when mode is static",
            field_path=".loadFile",
            reason="FieldValueRequired",
        ),
        CelRule(
            rule="!has(self.loadFile) || !self.loadFile.startsWith('configmap://') || self.loadFile.matches("
            "'^configmap://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[-._a-zA-Z0-9]+$')",
            message=(
                "must be configmap://NAME/KEY: NAME a DNS-1123 subdomain, KEY letters, digits, "
                "'-', '_' and '.'"
            ),
            field_path=".loadFile",
        ),
        CelRule(
            rule="!has(self.loadFile) || self.loadFile.matches('(?i)[^/][.](json|pt)$')",
            message="must end in .json or .pt (the load file's format)",
            field_path=".loadFile",
        ),
    ]


_MAX_POS_BY_PRESET = _map({p.value: a.max_position_embeddings for p, a in MODEL_PRESETS.items()})
_MAX_POS = (
    f"(has(self.model.architecture) ? {_get(ModelArch, 'max_position_embeddings', 'self.model.architecture')}"
    f" : {_MAX_POS_BY_PRESET}[self.model.preset])"
)


def _max_model_len_rule() -> CelRule:
    length = "self.serving.maxModelLen"
    return CelRule(
        rule=f"!has(self.serving) || !has({length}) || !{_MODEL_KNOWN} || {length} <= {_MAX_POS}",
        message="maxModelLen must not exceed the model's maxPositionEmbeddings",
        message_expression=(
            f"string({length}) + ' exceeds the model\\'s maxPositionEmbeddings (' + string({_MAX_POS}) + ')'"
        ),
        field_path=".serving.maxModelLen",
    )


def _serving_rules() -> list[CelRule]:
    tokens, seqs = _get(ServingSpec, "max_num_batched_tokens"), _get(ServingSpec, "max_num_seqs")
    queue, request = _get(ServingSpec, "queue_timeout_seconds"), _get(ServingSpec, "request_timeout_seconds")
    return [
        CelRule(
            rule=f"{tokens} >= {seqs}",
            message="maxNumBatchedTokens must be at least maxNumSeqs",
            message_expression=(
                f"string({tokens}) + ' is below maxNumSeqs (' + string({seqs}) + '): every running "
                "sequence must be able to decode in one step'"
            ),
            field_path=".maxNumBatchedTokens",
        ),
        CelRule(
            rule=f"{queue} <= {request}",
            message="queueTimeoutSeconds must not be longer than requestTimeoutSeconds",
            message_expression=(
                f"string({queue}) + ' s is longer than requestTimeoutSeconds (' + string({request}) + ' s)'"
            ),
            field_path=".queueTimeoutSeconds",
        ),
    ]


# The forms `locations.parse_location` accepts, by their prefix (it checks the rest too).
LOCATION_FORMS = "an absolute path, file:///PATH, pvc://CLAIM/PATH or hf://ORG/REPO[@REVISION]"


def _location_ok(value: str) -> str:
    return " || ".join(
        f"{value}.startsWith({_lit(prefix)})" for prefix in ("/", "file:///", "pvc://", "hf://")
    )


def _arch_rules() -> list[CelRule]:
    """ModelArch's own shape checks, with its messages."""
    n_group, topk_group = _get(ModelArch, "n_group"), _get(ModelArch, "topk_group")

    def exceeds(small: str, big: str, small_name: str, big_name: str) -> CelRule:
        return CelRule(
            rule=f"{small} <= {big}",
            message=f"{small_name} exceeds {big_name}",
            message_expression=(
                f"'{small_name} (' + string({small}) + ') exceeds {big_name} (' + string({big}) + ')'"
            ),
        )

    return [
        exceeds("self.firstKDenseLayers", "self.numLayers", "firstKDenseLayers", "numLayers"),
        exceeds("self.numExpertsPerTok", "self.numRoutedExperts", "numExpertsPerTok", "numRoutedExperts"),
        CelRule(
            rule=f"self.numRoutedExperts % {n_group} == 0",
            message="numRoutedExperts must divide into nGroup",
            message_expression=(
                f"'numRoutedExperts (' + string(self.numRoutedExperts) + ') must divide into nGroup (' + "
                f"string({n_group}) + ')'"
            ),
        ),
        exceeds(topk_group, n_group, "topkGroup", "nGroup"),
    ]


NO_ARCH_MESSAGE = (
    "set one of preset or architecture (neither is set), or a local checkpoint directory as weights.uri"
)

CEL_RULES: dict[type[BaseModel], tuple[CelRule, ...]] = {
    ModelArch: tuple(_arch_rules()),
    MoEDeploymentSpec: (
        *_pool_rules(Role.PREFILL), *_pool_rules(Role.DECODE), _max_model_len_rule(), _budget_rule()
    ),
    ModelSpec: (
        CelRule(
            # A local checkpoint directory names its own architecture (its config.json).
            rule=(
                "has(self.preset) || has(self.architecture) || (has(self.weights.uri) && "
                "(self.weights.uri.startsWith('/') || self.weights.uri.startsWith('file:///')))"
            ),
            message=NO_ARCH_MESSAGE,
        ),
        CelRule(
            rule="!(has(self.preset) && has(self.architecture))",
            message="set only one of preset or architecture (both are set)",
        ),
        CelRule(
            rule=f"!has(self.tokenizer) || self.tokenizer == {_lit(BYTE_TOKENIZER)} || "
            f"{_location_ok('self.tokenizer')}",
            message=f"must be {BYTE_TOKENIZER} or {LOCATION_FORMS}",
            field_path=".tokenizer",
        ),
    ),
    WeightsSpec: (
        CelRule(
            rule=f"{_get(WeightsSpec, 'format')} != {_lit(WeightsFormat.SAFETENSORS)} || has(self.uri)",
            message="is required when format is safetensors",
            field_path=".uri",
            reason="FieldValueRequired",
        ),
        CelRule(
            rule=f"!has(self.uri) || {_location_ok('self.uri')}",
            message=f"must be {LOCATION_FORMS}",
            field_path=".uri",
        ),
    ),
    ServingSpec: tuple(_serving_rules()),
    PoolSpec: tuple(_replica_rules()),
    EplbSpec: tuple(_eplb_rules()),
    PlannerSpec: (
        CelRule(
            rule=(
                f"{_get(PlannerSpec, 'perf_model')} != {_lit(PerfModelSource.PROFILE)} || "
                "has(self.profileFile)"
            ),
            message="is required when perfModel is profile",
            field_path=".profileFile",
            reason="FieldValueRequired",
        ),
    ),
}
