"""Cross-field rules of a MoEDeployment spec: every problem, each naming its field path with numbers.

Structural rules (types, ranges, enums) are enforced by the models themselves; these are the
rules that relate fields to each other and to the model and GPU presets. `validate_spec` returns
all problems; `check_spec` raises `SpecInvalid` carrying them. The rules CEL can express are
mirrored in the CRD (`celrules.py`) so the API server refuses the same manifests.
"""

from __future__ import annotations

from pathlib import Path

from moeplane.api.arch import ModelArch
from moeplane.api.celrules import NO_ARCH_MESSAGE
from moeplane.api.enums import PerfModelSource, Role, WeightsFormat
from moeplane.api.errors import Problem, SpecInvalid
from moeplane.api.hardware import HardwareSpec
from moeplane.api.hf_config import (
    CONFIG_FILE,
    HFConfigError,
    arch_differences,
    describe_differences,
    read_hf_config,
)
from moeplane.api.layout import resolve_group
from moeplane.api.podchecks import pod_problems
from moeplane.api.runtime import EngineDocument, resolve_document
from moeplane.api.runtime_rules import (
    RuntimeProblem,
    eplb_pool_problems,
    eplb_problems,
    kv_fit_problems,
    pool_problems,
    serving_problems,
    tokenizer_problems,
    weights_problems,
)
from moeplane.api.spec import MoEDeploymentSpec, PoolSpec

GB = 1e9


def check_spec(spec: MoEDeploymentSpec) -> None:
    """Raise `SpecInvalid` with every cross-field problem of `spec`."""
    problems = validate_spec(spec)
    if problems:
        raise SpecInvalid(problems)


def validate_spec(spec: MoEDeploymentSpec) -> list[Problem]:
    """Every cross-field problem of `spec`, in field order.

    The rules the runtime readers apply (`runtime_rules.py`) run here on the document the spec
    resolves to, reported at the manifest's fields, so a manifest that validates is one every
    reader accepts.
    """
    problems = _model_problems(spec)
    hw = spec.hardware.figures()
    arch = _arch_or_none(spec)
    # The name and namespace do not enter any rule.
    doc = resolve_document(spec, "validate", "default") if arch is not None else None
    if doc is not None:
        model = doc.model
        problems += _in_spec(tokenizer_problems(model.tokenizer, model.weights, model.architecture))
    for role in Role:
        problems += _pool_problems(f"spec.{role.value}", spec.pool(role), role, arch, hw, doc)
    if doc is not None:
        problems += _in_spec(serving_problems(doc.serving, doc.model.architecture))
    problems += _in_spec(eplb_problems(spec.eplb))
    if doc is not None:
        for role in Role:
            problems += _in_spec(eplb_pool_problems(role, doc.pool(role), doc.model.architecture, doc.eplb))
    problems += _planner_problems(spec, hw)
    problems += pod_problems(spec)
    return problems


def _in_spec(problems: list[RuntimeProblem]) -> list[Problem]:
    return [p.in_spec() for p in problems if p.spec_path is not None]


def _arch_or_none(spec: MoEDeploymentSpec) -> ModelArch | None:
    try:
        return spec.model.resolve_arch()
    except ValueError:
        return None


def _model_problems(spec: MoEDeploymentSpec) -> list[Problem]:
    model = spec.model
    problems = []
    checkpoint = model.local_checkpoint_dir() if model.weights.format is WeightsFormat.SAFETENSORS else None
    if model.preset is None and model.architecture is None and checkpoint is None:
        problems.append(Problem("spec.model", NO_ARCH_MESSAGE))
    elif model.preset is not None and model.architecture is not None:
        problems.append(Problem("spec.model", "set only one of preset or architecture (both are set)"))
    if checkpoint is not None:
        problems += _checkpoint_problems(spec, checkpoint)
    return problems + _in_spec(weights_problems(model.weights))


def _checkpoint_problems(spec: MoEDeploymentSpec, directory: str) -> list[Problem]:
    """A local checkpoint's config.json against the preset or architecture the manifest names."""
    model = spec.model
    if not Path(directory, CONFIG_FILE).is_file():
        if model.preset is None and model.architecture is None:
            return [Problem("spec.model.weights.uri", f"{directory} has no readable {CONFIG_FILE}")]
        return []  # not visible here (e.g. baked into the image): checked when the weights load
    try:
        actual = read_hf_config(directory).arch
    except HFConfigError as exc:
        return [Problem("spec.model.weights.uri", str(exc))]
    if model.preset is None and model.architecture is None:
        return []
    if model.preset is not None and model.architecture is not None:
        return []  # reported above
    diffs = arch_differences(model.resolve_arch(), actual)
    if not diffs:
        return []
    named = f"preset {model.preset.value}" if model.preset is not None else "architecture"
    return [Problem(
        "spec.model",
        f"{named} differs from {Path(directory, CONFIG_FILE)}: {describe_differences(diffs)}",
    )]


def _pool_problems(
    path: str,
    pool: PoolSpec,
    role: Role,
    arch: ModelArch | None,
    hw: HardwareSpec,
    doc: EngineDocument | None,
) -> list[Problem]:
    problems = []
    if doc is not None:
        # A document-only problem of a resolved layout would be a resolver bug, not the user's.
        problems += _in_spec(pool_problems(role, doc.pool(role), doc.model.architecture))
    if pool.min_replicas > pool.replicas:
        problems.append(Problem(
            f"{path}.minReplicas", f"{pool.min_replicas} exceeds replicas ({pool.replicas})"
        ))
    if pool.max_replicas is not None and pool.replicas > pool.max_replicas:
        problems.append(Problem(
            f"{path}.maxReplicas", f"{pool.max_replicas} is below replicas ({pool.replicas})"
        ))
    if arch is not None and not problems:
        problems += _memory_problems(path, pool, role, arch, hw)
    if doc is not None and not problems:
        problems += _in_spec(kv_fit_problems(role, doc.pool(role), doc.serving))
    return problems


def _memory_problems(
    path: str, pool: PoolSpec, role: Role, arch: ModelArch, hw: HardwareSpec
) -> list[Problem]:
    group = resolve_group(arch, hw, pool, role)
    kv_min = pool.min_kv_tokens_per_gpu * group.kv_bytes_per_token_per_gpu
    need = group.weight_bytes_per_gpu + kv_min
    if need <= group.usable_bytes_per_gpu:
        return []
    replicated = group.weight_bytes_per_gpu - group.expert_weight_bytes_per_gpu
    return [Problem(
        f"{path}.expertParallel",
        f"does not fit in GPU memory: {group.routed_experts_per_gpu} routed + "
        f"{group.shared_experts_per_gpu} shared experts per GPU x {arch.num_moe_layers} MoE layers = "
        f"{group.expert_weight_bytes_per_gpu / GB:.1f} GB, plus {replicated / GB:.1f} GB replicated "
        f"weights, plus minKvTokensPerGpu {pool.min_kv_tokens_per_gpu} x "
        f"{group.kv_bytes_per_token_per_gpu} B = {kv_min / GB:.1f} GB, needs {need / GB:.1f} GB > "
        f"{group.usable_bytes_per_gpu / GB:.1f} GB usable ({hw.hbm_bytes / GB:.1f} GB {hw.name} x "
        f"gpuMemoryUtilization {pool.gpu_memory_utilization}); raise expertParallel",
    )]


def _planner_problems(spec: MoEDeploymentSpec, hw: HardwareSpec) -> list[Problem]:
    planner = spec.planner
    problems = []
    if planner.perf_model is PerfModelSource.PROFILE and planner.profile_file is None:
        problems.append(Problem("spec.planner.profileFile", "is required when perfModel is profile"))
    if planner.gpu_budget_nodes is not None:
        budget_gpus = planner.gpu_budget_nodes * hw.gpus_per_node
        p, d = spec.prefill, spec.decode
        need = p.min_replicas * p.expert_parallel + d.min_replicas * d.expert_parallel
        if need > budget_gpus:
            problems.append(Problem(
                "spec.planner.gpuBudgetNodes",
                f"{planner.gpu_budget_nodes} nodes x {hw.gpus_per_node} = {budget_gpus} GPUs cannot "
                f"hold the pools' minimum: prefill {p.min_replicas} x EP{p.expert_parallel} + decode "
                f"{d.min_replicas} x EP{d.expert_parallel} = {need} GPUs",
            ))
    return problems
