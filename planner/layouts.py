"""Choosing the EP width: for a workload (ISL, OSL, rate) and the SLA, the cheapest valid layout
of each pool — expert-parallel size, redundant experts, groups.

Candidates per pool: EP sizes up to `max_nodes_per_group` nodes (at most a node, or whole nodes)
that divide the expert slots for some number of redundant experts in `REDUNDANT_CHOICES`, each
checked by the API's own validation (memory fit with `minKvTokensPerGpu`, attention split). Each
candidate is sized with the roofline model of its own layout (redundant experts improve the
expected EPLB balancedness, `balancedness_for`) at the SLA's targets and `headroom`, and costs
its groups × GPUs. The cheapest wins; the others are listed with why they lose.

The planner reruns the search on the load it observes and offers the result as a recommendation
with the GPU-hours it would save (`LayoutAdvice`); `spec.planner.layoutChanges: apply` lets it
patch the MoEDeployment's pool layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from moeplane.api.enums import Role
from moeplane.api.layout import resolve_group
from moeplane.api.spec import MoEDeploymentSpec, PoolSpec
from moeplane.api.validation import validate_spec
from moeplane.planner.config import PlannerConfig
from moeplane.planner.perf.roofline import RooflineModel, RooflineOptions
from moeplane.planner.sizing import PoolModels, size_decode, size_prefill
from moeplane.planner.tick import LoadForecast

REDUNDANT_CHOICES = (0, 8, 16, 32, 64)
MAX_NODES_PER_GROUP = 36
# Balancedness EPLB reaches (mean/max per-GPU load): 0.75 with no spare slots, 0.9 (DeepSeek's
# regime) once every GPU holds one redundant expert.
BALANCEDNESS_NONE, BALANCEDNESS_FULL = 0.75, 0.9


def balancedness_for(redundant: int, ep: int) -> float:
    share = min(1.0, redundant / ep) if ep > 0 else 0.0
    return BALANCEDNESS_NONE + (BALANCEDNESS_FULL - BALANCEDNESS_NONE) * share


@dataclass(frozen=True)
class Workload:
    rate_per_s: float
    isl_tokens: float
    osl_tokens: float
    isl_cv: float = 0.0
    osl_cv: float = 0.0
    cached_fraction: float = 0.0

    def forecast(self) -> LoadForecast:
        return LoadForecast(
            self.rate_per_s,
            self.rate_per_s,
            max(self.isl_tokens, 1.0),
            max(self.osl_tokens, 1.0),
            self.isl_cv,
            self.osl_cv,
            self.cached_fraction,
        )


@dataclass(frozen=True)
class Candidate:
    role: Role
    expert_parallel: int
    redundant_experts: int
    groups: int | None  # None: no pool size meets the SLA (or the layout is invalid)
    gpus_per_group: int
    nodes_per_group: int
    kv_tokens_per_gpu: int
    problem: str = ""  # why the layout is invalid or infeasible

    @property
    def gpus(self) -> int | None:
        return None if self.groups is None else self.groups * self.gpus_per_group

    @property
    def label(self) -> str:
        return f"EP{self.expert_parallel} +{self.redundant_experts} redundant"

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "expertParallel": self.expert_parallel,
            "redundantExperts": self.redundant_experts,
            "groups": self.groups,
            "gpusPerGroup": self.gpus_per_group,
            "nodesPerGroup": self.nodes_per_group,
            "gpus": self.gpus,
            "kvTokensPerGpu": self.kv_tokens_per_gpu,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class PoolChoice:
    role: Role
    best: Candidate | None
    current: Candidate
    runners_up: tuple[tuple[Candidate, str], ...] = field(default=())  # (candidate, why it loses)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "best": None if self.best is None else self.best.to_dict(),
            "current": self.current.to_dict(),
            "runnersUp": [{**c.to_dict(), "why": why} for c, why in self.runners_up],
        }


def _ep_sizes(gpus_per_node: int, slots_max: int) -> list[int]:
    small = [n for n in range(1, gpus_per_node + 1) if gpus_per_node % n == 0]
    big = [gpus_per_node * k for k in range(2, MAX_NODES_PER_GROUP + 1) if gpus_per_node * k <= slots_max]
    return small + big


def _candidate(
    spec: MoEDeploymentSpec,
    config: PlannerConfig,
    role: Role,
    pool: PoolSpec,
    load: LoadForecast,
    options: RooflineOptions,
) -> Candidate:
    arch, hw = spec.model.resolve_arch(), spec.hardware.figures()
    group = resolve_group(arch, hw, pool, role)
    base = Candidate(
        role,
        pool.expert_parallel,
        pool.redundant_experts,
        None,
        group.gpus_per_group,
        group.nodes_per_group,
        group.kv_tokens_per_gpu,
    )
    candidate_spec = spec.model_copy(update={role.value: pool})
    problems = [p for p in validate_spec(candidate_spec) if p.path.startswith(f"spec.{role.value}.")]
    if problems:
        return _with(base, problem=f"{problems[0].path}: {problems[0].message}")
    opts = RooflineOptions(
        two_batch_overlap=options.two_batch_overlap,
        balancedness=balancedness_for(pool.redundant_experts, pool.expert_parallel),
        prefix_cache_hit_rate=0.0,
        mtp_draft_tokens=options.mtp_draft_tokens,
        mtp_acceptance=options.mtp_acceptance,
        efficiency=options.efficiency,
    )
    model = RooflineModel(arch, hw, group, opts)
    models = PoolModels(model, model)  # only `role`'s side is asked
    sized = (size_prefill if role is Role.PREFILL else size_decode)(models, config, load).groups
    if sized is None:
        target = config.sla.ttft_ms if role is Role.PREFILL else config.sla.itl_ms
        return _with(base, problem=f"no pool size meets the {target:g} ms target")
    return _with(base, groups=max(sized, 1))


def _with(c: Candidate, **changes: Any) -> Candidate:
    return Candidate(**{**c.__dict__, **changes})


def _why_loses(c: Candidate, best: Candidate) -> str:
    """Why `c` ranks below `best`, in the order of the ranking: GPUs, groups, KV room, spare slots."""
    assert c.gpus is not None and best.gpus is not None
    if c.gpus > best.gpus:
        return f"{c.gpus - best.gpus} more GPUs ({c.groups} x {c.gpus_per_group})"
    if c.groups != best.groups:
        return f"same {c.gpus} GPUs in more groups ({c.groups} x {c.gpus_per_group})"
    if c.kv_tokens_per_gpu != best.kv_tokens_per_gpu:
        return (
            f"same {c.gpus} GPUs, less KV room ({c.kv_tokens_per_gpu:,} vs "
            f"{best.kv_tokens_per_gpu:,} tokens/GPU: its redundant experts take memory)"
        )
    return f"same {c.gpus} GPUs and KV room, {c.redundant_experts} redundant experts to place"


def choose_pool(
    spec: MoEDeploymentSpec,
    config: PlannerConfig,
    role: Role,
    work: Workload,
    options: RooflineOptions | None = None,
    keep: int = 5,
) -> PoolChoice:
    """The cheapest valid layout of one pool, the current one, and the runner-ups."""
    options = options or RooflineOptions()
    arch = spec.model.resolve_arch()
    gpn = spec.hardware.figures().gpus_per_node
    load = work.forecast()
    current_pool = spec.pool(role)
    current = _candidate(spec, config, role, current_pool, load, options)
    found: list[Candidate] = []
    for ep in _ep_sizes(gpn, arch.num_routed_experts + max(REDUNDANT_CHOICES)):
        for redundant in REDUNDANT_CHOICES:
            if (arch.num_routed_experts + redundant) % ep:
                continue
            pool = current_pool.model_copy(
                update={
                    "expert_parallel": ep,
                    "redundant_experts": redundant,
                    "data_parallel_attention": None,
                }
            )
            found.append(_candidate(spec, config, role, pool, load, options))
    feasible = sorted(
        (c for c in found if c.gpus is not None),
        key=lambda c: (c.gpus, c.groups, -c.kv_tokens_per_gpu, c.redundant_experts),
    )
    best = feasible[0] if feasible else None
    runners: list[tuple[Candidate, str]] = []
    for c in feasible[1:keep]:
        assert best is not None and best.gpus is not None and c.gpus is not None
        runners.append((c, _why_loses(c, best)))
    for c in sorted((c for c in found if c.gpus is None), key=lambda c: -c.expert_parallel)[
        : max(0, keep - 3)
    ]:
        runners.append((c, c.problem))
    return PoolChoice(role, best, current, tuple(runners))


@dataclass(frozen=True)
class LayoutAdvice:
    """A recommendation: per pool, the best layout for the observed workload and what it saves."""

    workload: Workload
    prefill: PoolChoice
    decode: PoolChoice

    def pool(self, role: Role) -> PoolChoice:
        return self.prefill if role is Role.PREFILL else self.decode

    @property
    def gpus_now(self) -> int | None:
        a, b = self.prefill.current.gpus, self.decode.current.gpus
        return None if a is None or b is None else a + b

    @property
    def gpus_best(self) -> int | None:
        a, b = self.prefill.best, self.decode.best
        return None if a is None or b is None or a.gpus is None or b.gpus is None else a.gpus + b.gpus

    @property
    def gpu_hours_saved_per_hour(self) -> float:
        """GPUs the best layouts free at this workload (GPU-hours saved per hour of it)."""
        now, best = self.gpus_now, self.gpus_best
        if best is None:
            return 0.0
        if now is None:  # the current layout cannot meet the SLA at all
            return math.inf
        return float(max(0, now - best))

    @property
    def changes(self) -> bool:
        return any(
            p.best is not None
            and (p.best.expert_parallel, p.best.redundant_experts)
            != (p.current.expert_parallel, p.current.redundant_experts)
            for p in (self.prefill, self.decode)
        )

    def summary(self) -> str:
        if not self.changes:
            return "the current layout is the cheapest that meets the SLA"
        parts = []
        for p in (self.prefill, self.decode):
            if p.best is not None and p.best.label != p.current.label:
                parts.append(f"{p.role.value} {p.current.label} -> {p.best.label} x {p.best.groups}")
        saved = self.gpu_hours_saved_per_hour
        return "; ".join(parts) + (f": saves {saved:.0f} GPU-hours per hour" if math.isfinite(saved) else "")

    def to_dict(self) -> dict[str, Any]:
        saved = self.gpu_hours_saved_per_hour
        return {
            "workload": self.workload.__dict__,
            "changes": self.changes,
            "summary": self.summary(),
            "gpusNow": self.gpus_now,
            "gpusBest": self.gpus_best,
            "gpuHoursSavedPerHour": saved if math.isfinite(saved) else None,
            "prefill": self.prefill.to_dict(),
            "decode": self.decode.to_dict(),
        }


def advise(
    spec: MoEDeploymentSpec, config: PlannerConfig, work: Workload, options: RooflineOptions | None = None
) -> LayoutAdvice:
    return LayoutAdvice(
        work,
        choose_pool(spec, config, Role.PREFILL, work, options),
        choose_pool(spec, config, Role.DECODE, work, options),
    )


def layout_patch(advice: LayoutAdvice, spec: MoEDeploymentSpec | None = None) -> dict[str, Any]:
    """The MoEDeployment spec merge patch that applies the advice: per pool whose layout
    changes, the new EP size, redundant experts and group count. With `spec`, a pool whose
    advised groups fall outside its minReplicas..maxReplicas is left out (the bounds are the
    user's; the recommendation still shows it)."""
    patch: dict[str, Any] = {}
    for p in (advice.prefill, advice.decode):
        if p.best is None or p.best.groups is None or p.best.label == p.current.label:
            continue
        if spec is not None:
            pool = spec.pool(p.role)
            if p.best.groups < pool.min_replicas or (
                pool.max_replicas is not None and p.best.groups > pool.max_replicas
            ):
                continue
        patch[p.role.value] = {
            "expertParallel": p.best.expert_parallel,
            "redundantExperts": p.best.redundant_experts,
            "dataParallelAttention": None,  # every GPU its own attention rank, as searched
            "replicas": p.best.groups,
        }
    return patch
