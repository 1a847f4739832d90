"""From a MoEDeployment spec to the planner's own config and performance models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from moeplane.api.enums import PerfModelSource, Role
from moeplane.api.layout import resolve_group
from moeplane.api.spec import MoEDeploymentSpec
from moeplane.planner.config import PlannerConfig, PoolBounds, SlaTargets
from moeplane.planner.perf.errors import PerfModelError
from moeplane.planner.perf.profile import ProfiledModel, load_profile, profile_from_models
from moeplane.planner.perf.roofline import RooflineModel, RooflineOptions
from moeplane.planner.sizing import PoolModels


def config_from_spec(spec: MoEDeploymentSpec, **overrides: object) -> PlannerConfig:
    """`spec.sla`, `spec.planner` and the pools' bounds as a PlannerConfig (`overrides` win)."""
    sla, pl = spec.sla, spec.planner
    config = PlannerConfig(
        sla=SlaTargets(ttft_ms=sla.ttft_ms, itl_ms=sla.itl_ms, percentile=sla.percentile),
        interval_s=pl.interval_seconds,
        predictor=pl.predictor,
        prefill_bounds=PoolBounds(spec.prefill.min_replicas, spec.prefill.max_replicas),
        decode_bounds=PoolBounds(spec.decode.min_replicas, spec.decode.max_replicas),
        gpu_budget_nodes=pl.gpu_budget_nodes,
        cooldown_s=pl.cooldown_seconds,
        max_step_groups=pl.max_step_groups,
        capacity_margin=pl.capacity_margin_percent / 100,
    )
    return replace(config, **overrides) if overrides else config  # type: ignore[arg-type]


def roofline_models(
    spec: MoEDeploymentSpec, options: RooflineOptions | None = None
) -> tuple[RooflineModel, RooflineModel]:
    """(prefill, decode) roofline models of the spec's layout."""
    arch, hw = spec.model.resolve_arch(), spec.hardware.figures()
    return tuple(  # type: ignore[return-value]
        RooflineModel(arch, hw, resolve_group(arch, hw, spec.pool(role), role), options)
        for role in (Role.PREFILL, Role.DECODE)
    )


def profiled_models(
    spec: MoEDeploymentSpec, options: RooflineOptions | None = None, base_dir: Path | None = None
) -> tuple[ProfiledModel, ProfiledModel]:
    """Tabulated (prefill, decode) models: from `spec.planner.profileFile` when the spec asks for
    a profile, otherwise the roofline sampled on the default grid."""
    if spec.planner.perf_model is PerfModelSource.PROFILE:
        if spec.planner.profile_file is None:
            raise PerfModelError("spec.planner.profileFile is required when perfModel is profile")
        path = Path(spec.planner.profile_file)
        profile = load_profile(path if path.is_absolute() or base_dir is None else base_dir / path)
        for role in (Role.PREFILL, Role.DECODE):
            curves = profile.prefill if role is Role.PREFILL else profile.decode
            if curves.expert_parallel != spec.pool(role).expert_parallel:
                raise PerfModelError(
                    f"profile {path}: {role.value} was measured at expertParallel {curves.expert_parallel}, "
                    f"spec.{role.value}.expertParallel is {spec.pool(role).expert_parallel}"
                )
    else:
        prefill, decode = roofline_models(spec, options)
        profile = profile_from_models(prefill, decode, model=prefill.arch.name, hardware=prefill.hw.name)
    return ProfiledModel(profile, Role.PREFILL), ProfiledModel(profile, Role.DECODE)


def pool_models(
    spec: MoEDeploymentSpec, options: RooflineOptions | None = None, base_dir: Path | None = None
) -> PoolModels:
    return PoolModels(*profiled_models(spec, options, base_dir))
