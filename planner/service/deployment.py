"""One MoEDeployment under the planner: observe -> core -> act, once per interval.

Nothing the next decision depends on lives only in memory. On (re)start the planner replays the
request stream's recent intervals through the core at the pools' current sizes (the predictors,
margins and scale-down window come back as they were), and the cooldown restarts from the
status' `lastDecision.at`. The pools' sizes are always read from the cluster, never remembered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from moeplane.api.enums import LayoutChanges, Role
from moeplane.api.spec import MoEDeployment
from moeplane.api.status import PlannerDecisionStatus
from moeplane.planner.adapters import DeploymentSource, PoolScaler
from moeplane.planner.config import PlannerConfig
from moeplane.planner.core import Planner, initial_state
from moeplane.planner.layouts import LayoutAdvice, Workload, advise, layout_patch
from moeplane.planner.metrics import PlannerMetrics
from moeplane.planner.observe import (
    PoolGroups,
    RedisObserver,
    WindowBy,
    WindowStats,
    in_flight,
    tick_from,
    window_stats,
)
from moeplane.planner.perf.errors import PerfModelError
from moeplane.planner.service.expert_load import ExpertLoadHistory
from moeplane.planner.sizing import PoolModels
from moeplane.planner.spec_adapter import config_from_spec, pool_models
from moeplane.planner.tick import Decision, ObservedPool, ReasonCode, TickInput

from moeplane.bus.keys import DeploymentKeys

log = logging.getLogger(__name__)

DECISIONS_MAXLEN = 2000
LAYOUT_ANNOTATION = "moeplane.io/last-layout-change"
LAYOUT_STABLE_TICKS = 3
LAYOUT_MIN_SAVING = 0.1
# The layout search (about a second of CPU) is rerun when the workload moved by more than this.
ADVICE_REUSE_CHANGE = 0.05


def _close(a: Workload, b: Workload, rel: float) -> bool:
    """Rate and mean lengths within `rel` of each other (the recommendation would not change)."""
    pairs = ((a.rate_per_s, b.rate_per_s), (a.isl_tokens, b.isl_tokens), (a.osl_tokens, b.osl_tokens))
    return all(abs(x - y) <= rel * max(abs(x), abs(y), 1e-9) for x, y in pairs)
WARMUP_INTERVALS = 30
_REASON_CHARS = 1024


@dataclass(frozen=True)
class PlannedTick:
    """One interval's work: what was observed, what the core decided, whether it was applied."""

    stats: WindowStats
    decision: Decision
    applied: bool


def observed_pools(tick: TickInput) -> dict[str, Any]:
    """Each pool as the tick saw it: groups, requests running and waiting, KV memory in use."""

    def pool(p: ObservedPool) -> dict[str, Any]:
        return {
            "readyGroups": p.ready_groups,
            "startingGroups": p.starting_groups,
            "running": p.running_requests,
            "waiting": p.queued_requests,
            "kvUsage": None if p.utilization is None or p.role is Role.PREFILL else round(p.utilization, 4),
            "unsettled": p.unsettled,
        }

    return {"prefill": pool(tick.prefill), "decode": pool(tick.decode)}


def decision_record(
    stats: WindowStats, decision: Decision, applied: bool, tick: TickInput | None = None
) -> dict[str, Any]:
    """What goes to the decisions stream: the decision, the window it saw, the pools as observed,
    whether it acted."""
    out = {"kind": "decision", "applied": applied, "observed": stats.to_dict(), **decision.to_dict()}
    if tick is not None:
        out["pools"] = observed_pools(tick)
    return out


def last_decision_status(
    decision: Decision, applied: bool, advice: LayoutAdvice | None = None
) -> PlannerDecisionStatus:
    """`status.lastDecision` of the MoEDeployment, typed (its wire form is written)."""
    reasons = [str(r) for r in decision.reasons if r.code is not ReasonCode.HOLD]
    return PlannerDecisionStatus(
        at=datetime.fromtimestamp(decision.at_s, UTC),
        prefill_replicas=decision.prefill.desired_groups,
        decode_replicas=decision.decode.desired_groups,
        predicted_requests_per_s=round(decision.forecast.arrival_rate_per_s, 4),
        applied=applied,
        reason="; ".join(reasons)[:_REASON_CHARS],
        layout_recommendation=None if advice is None else advice.summary()[:_REASON_CHARS],
    )


def _model_inputs(deployment: MoEDeployment) -> tuple[object, ...]:
    """What the performance models are built from (a change rebuilds them)."""
    spec = deployment.spec
    sizes = {"replicas": 0, "min_replicas": 0, "max_replicas": None}
    return (
        spec.model,
        spec.hardware,
        *(spec.pool(r).model_copy(update=sizes) for r in (Role.PREFILL, Role.DECODE)),
        spec.planner.perf_model,
        spec.planner.profile_file,
    )


class DeploymentPlanner:
    """The live loop of one deployment. `tick()` is one interval's work; `run()` repeats it."""

    def __init__(
        self,
        deployment: MoEDeployment,
        source: DeploymentSource,
        pools: PoolScaler,
        redis: Any,
        metrics: PlannerMetrics,
        *,
        clock: Any = time.time,
    ) -> None:
        self.source, self.scaler, self.redis, self.metrics, self.clock = source, pools, redis, metrics, clock
        self.deployment = deployment
        self.namespace = str(deployment.metadata.namespace or "default")
        self.name = str(deployment.metadata.name)
        self.keys = DeploymentKeys(self.namespace, self.name)
        self.config: PlannerConfig = config_from_spec(deployment.spec)
        self.models: PoolModels = pool_models(deployment.spec)
        self.planner = Planner(self.config, self.models)
        self.observer = RedisObserver(redis, self.keys, history_s=max(3600.0, 40 * self.config.interval_s))
        self.last: PlannedTick | None = None
        self.last_pools: tuple[PoolGroups, PoolGroups] | None = None
        self.expert_load = ExpertLoadHistory()
        self.recommendation: LayoutAdvice | None = None
        self._advised_for: tuple[Any, PlannerConfig] | None = None  # (spec, config) of it
        self._layout_key: str | None = None
        self._layout_streak = 0
        self.warmed = False
        self._in_flight: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def update(self, deployment: MoEDeployment) -> bool:
        """A new version of the CR. Returns False when the planner is no longer enabled."""
        if not deployment.spec.planner.enabled:
            return False
        if deployment.spec != self.deployment.spec:
            config = config_from_spec(deployment.spec)
            if _model_inputs(deployment) != _model_inputs(self.deployment):
                self.models = pool_models(deployment.spec)
            # The predictors keep what they learnt; the settings (SLA, bounds, budget) change now.
            self.planner = Planner(config, self.models, self.planner.state)
            self.config = config
        self.deployment = deployment
        return True

    async def pools(self) -> tuple[PoolGroups, PoolGroups] | None:
        prefill, decode = await asyncio.gather(
            *(self.scaler.pool_groups(self.namespace, self.name, r) for r in (Role.PREFILL, Role.DECODE))
        )
        if prefill is None or decode is None:
            return None
        self.last_pools = (prefill, decode)
        return prefill, decode

    async def warm_up(self, now_s: float) -> None:
        """Replay the recent intervals at the pools' current size, and restart the cooldown from
        the last decision the status records."""
        records = await self.observer.refresh(now_s)
        pools = await self.pools()
        interval = self.config.interval_s
        state = initial_state(self.config)
        if records and pools is not None:
            start = max(records[0].arrived_at_s, now_s - WARMUP_INTERVALS * interval)
            n = int((now_s - start) // interval)
            t0 = now_s - n * interval
            for i in range(n):
                stats = window_stats(
                    records, t0 + i * interval, t0 + (i + 1) * interval, self.config.sla.percentile
                )
                state = Planner(self.config, self.models, state).on_tick(tick_from(stats, *pools, [])).state
        last = self.deployment.status.last_decision if self.deployment.status else None
        at_s = last.at.timestamp() if last is not None else None
        # Whatever the replay inferred about growth, the cluster's record of the last decision
        # is what says when the pools last moved.
        self.planner = Planner(
            self.config, self.models, replace(state, prefill_grew_at_s=at_s, decode_grew_at_s=at_s)
        )
        self.warmed = True

    async def tick(self, now_s: float | None = None) -> PlannedTick | None:
        """One interval: observe the requests that ended in [now - interval, now) and the requests
        in flight, decide, scale, record. None if the pools do not exist yet."""
        now = self.clock() if now_s is None else now_s
        if not self.warmed:
            await self.warm_up(now - self.config.interval_s)
        records = await self.observer.refresh(now)
        pools = await self.pools()
        if pools is None:
            return None
        workers = await self.observer.workers()
        sla = self.config.sla
        stats = window_stats(
            records,
            now - self.config.interval_s,
            now,
            sla.percentile,
            by=WindowBy.FINISH,
            ttft_target_ms=sla.ttft_ms,
        )
        held = in_flight(workers)
        growth = 0 if self._in_flight is None else held - self._in_flight
        self._in_flight = held
        tick = tick_from(stats, *pools, workers, in_flight_growth=growth)
        decision = self.planner.on_tick(tick)
        applied = True
        for role, seen in zip((Role.PREFILL, Role.DECODE), pools, strict=True):
            wanted = decision.pool(role).desired_groups
            if wanted != seen.desired:
                try:
                    await self.scaler.scale(self.namespace, self.name, role, wanted)
                except Exception:
                    log.exception("%s/%s: scaling %s to %d failed", *self.key, role.value, wanted)
                    applied = False
        result = PlannedTick(stats, decision, applied)
        self.last = result
        self.metrics.record(self.namespace, self.name, stats, decision, applied)
        await self.redis.xadd(
            self.keys.planner_decisions(),
            {"json": json.dumps(decision_record(stats, decision, applied, tick))},
            maxlen=DECISIONS_MAXLEN,
            approximate=True,
        )
        # The layout search costs about a second of CPU: off the event loop, which serves the
        # dashboard and /healthz meanwhile.
        self.recommendation = await asyncio.to_thread(self._advise, decision)
        await self.source.record_decision(
            self.namespace, self.name, last_decision_status(decision, applied, self.recommendation)
        )
        if (
            self.recommendation is not None
            and self.deployment.spec.planner.layout_changes is LayoutChanges.APPLY
        ):
            await self._apply_layout(self.recommendation, tick)
        return result

    def _advise(self, decision: Decision) -> LayoutAdvice | None:
        """The cheapest layouts for the load just sized for (the roofline of each candidate)."""
        load = decision.forecast
        if load.arrival_rate_per_s <= 0:
            return self.recommendation
        work = Workload(
            load.arrival_rate_per_s,
            load.isl_tokens,
            load.osl_tokens,
            load.isl_tokens_cv,
            load.osl_tokens_cv,
            load.cached_fraction,
        )
        spec, config = self.deployment.spec, self.config
        last = self.recommendation
        if (
            last is not None
            and self._advised_for == (spec, config)
            and _close(last.workload, work, ADVICE_REUSE_CHANGE)
        ):
            return last  # the same workload to a few %: the same answer
        try:
            advice = advise(spec, config, work)
            self._advised_for = (spec, config)
            return advice
        except (ValueError, PerfModelError):  # a model the roofline cannot describe: no advice
            log.exception("%s/%s: layout search failed", *self.key)
            return None

    async def _apply_layout(self, advice: LayoutAdvice, tick: TickInput) -> None:
        """`layoutChanges: apply`: patch the pools' layout when the same recommendation held for
        `LAYOUT_STABLE_TICKS` ticks, it saves at least `LAYOUT_MIN_SAVING` of the GPUs and the
        pools are settled. Until rollouts replace groups one at a time, the operator rebuilds a
        pool whose layout changed (see README)."""
        patch = layout_patch(advice, self.deployment.spec)
        now, best = advice.gpus_now, advice.gpus_best
        worth = bool(patch) and best is not None and (now is None or best <= (1 - LAYOUT_MIN_SAVING) * now)
        # The same layout (sizes may move with the load) must hold for a few ticks.
        shape = {pool: (p["expertParallel"], p["redundantExperts"]) for pool, p in patch.items()}
        key = json.dumps(shape, sort_keys=True) if worth else None
        self._layout_streak = (self._layout_streak + 1) if key is not None and key == self._layout_key else 1
        self._layout_key = key
        if key is None or self._layout_streak < LAYOUT_STABLE_TICKS:
            return
        if (
            tick.prefill.unsettled
            or tick.decode.unsettled
            or tick.prefill.starting_groups
            or tick.decode.starting_groups
        ):
            return
        audit = {
            "kind": "layout_change",
            "at": datetime.now(UTC).isoformat(),
            "by": "planner",
            "patch": patch,
            "summary": advice.summary(),
        }
        await self.source.patch_spec(
            self.namespace,
            self.name,
            {
                "metadata": {"annotations": {LAYOUT_ANNOTATION: json.dumps(audit, sort_keys=True)}},
                "spec": patch,
            },
        )
        await self.redis.xadd(
            self.keys.planner_decisions(),
            {"json": json.dumps(audit)},
            maxlen=DECISIONS_MAXLEN,
            approximate=True,
        )
        self._layout_streak, self._layout_key = 0, None

    async def run(self) -> None:
        while True:
            started = self.clock()
            try:
                await self.tick(started)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s/%s: planner tick failed", *self.key)
                self.metrics.errors.labels(*self.key).inc()
            await asyncio.sleep(max(0.05, self.config.interval_s - (self.clock() - started)))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"planner-{self.namespace}-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def read_events(redis: Any, keys: DeploymentKeys, count: int = 500) -> list[dict[str, Any]]:
    """The newest planner events (decisions and SLA changes), oldest first."""
    entries = await redis.xrevrange(keys.planner_decisions(), count=count) or []
    out = []
    for _, fields in reversed(entries):
        blob = fields.get(b"json", fields.get("json")) if isinstance(fields, dict) else None
        if blob is None:
            continue
        try:
            out.append(json.loads(blob))
        except ValueError:
            continue
    return out
