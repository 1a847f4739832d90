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

from moeplane.api.enums import Role
from moeplane.api.spec import MoEDeployment, parse_deployment
from moeplane.planner.config import PlannerConfig
from moeplane.planner.connectors import PoolBackend
from moeplane.planner.core import Planner, initial_state
from moeplane.planner.metrics import PlannerMetrics
from moeplane.planner.observe import PoolGroups, RedisObserver, WindowStats, tick_from, window_stats
from moeplane.planner.sizing import PoolModels
from moeplane.planner.spec_adapter import config_from_spec, pool_models
from moeplane.planner.tick import Decision

from moeplane.bus.keys import DeploymentKeys

log = logging.getLogger(__name__)

DECISIONS_MAXLEN = 2000
WARMUP_INTERVALS = 30


@dataclass(frozen=True)
class TickResult:
    stats: WindowStats
    decision: Decision
    applied: bool


def decision_record(stats: WindowStats, decision: Decision, applied: bool) -> dict[str, Any]:
    """What goes to the decisions stream: the decision, the window it saw, whether it acted."""
    return {"kind": "decision", "applied": applied, "observed": stats.to_dict(), **decision.to_dict()}


def last_decision_status(decision: Decision, applied: bool) -> dict[str, Any]:
    """`status.lastDecision` of the MoEDeployment (api/status.py PlannerDecisionStatus)."""
    reasons = [str(r) for r in decision.reasons if r.code.value != "hold"]
    return {
        "at": datetime.fromtimestamp(decision.at_s, UTC).isoformat(),
        "prefillReplicas": decision.prefill.desired_groups,
        "decodeReplicas": decision.decode.desired_groups,
        "predictedRequestsPerS": round(decision.forecast.arrival_rate_per_s, 4),
        "applied": applied,
        "reason": "; ".join(reasons)[:1024],
    }


class DeploymentPlanner:
    """The live loop of one deployment. `tick()` is one interval's work; `run()` repeats it."""

    def __init__(
        self,
        obj: dict[str, Any],
        kube: PoolBackend,
        redis: Any,
        metrics: PlannerMetrics,
        *,
        clock: Any = time.time,
    ) -> None:
        self.kube, self.redis, self.metrics, self.clock = kube, redis, metrics, clock
        self.deployment: MoEDeployment = parse_deployment(obj)
        self.namespace = str(self.deployment.metadata.namespace or "default")
        self.name = str(self.deployment.metadata.name)
        self.keys = DeploymentKeys(self.namespace, self.name)
        self.config: PlannerConfig = config_from_spec(self.deployment.spec)
        self.models: PoolModels = pool_models(self.deployment.spec)
        self.planner = Planner(self.config, self.models)
        self.observer = RedisObserver(redis, self.keys, history_s=max(3600.0, 40 * self.config.interval_s))
        self.last: TickResult | None = None
        self.warmed = False
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def update(self, obj: dict[str, Any]) -> bool:
        """A new version of the CR. Returns False when the planner is no longer enabled."""
        deployment = parse_deployment(obj)
        if not deployment.spec.planner.enabled:
            return False
        if deployment.spec != self.deployment.spec:
            config = config_from_spec(deployment.spec)
            if (
                deployment.spec.model != self.deployment.spec.model
                or any(
                    deployment.spec.pool(r).expert_parallel != self.deployment.spec.pool(r).expert_parallel
                    for r in Role
                )
                or deployment.spec.hardware != self.deployment.spec.hardware
            ):
                self.models = pool_models(deployment.spec)
            # The predictors keep what they learnt; the settings (SLA, bounds, budget) change now.
            self.planner = Planner(config, self.models, self.planner.state)
            self.config = config
        self.deployment = deployment
        return True

    async def pools(self) -> tuple[PoolGroups, PoolGroups] | None:
        got = await asyncio.gather(
            *(asyncio.to_thread(self.kube.pool_groups, self.namespace, self.name, r) for r in Role)
        )
        prefill, decode = got
        if prefill is None or decode is None:
            return None
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
        # Whatever the replay inferred about changes, the cluster's record of the last decision
        # is what says when the pools last moved.
        self.planner = Planner(
            self.config, self.models, replace(state, prefill_changed_at_s=at_s, decode_changed_at_s=at_s)
        )
        self.warmed = True

    async def tick(self, now_s: float | None = None) -> TickResult | None:
        """One interval: observe [now - interval, now), decide, scale, record. None if the pools
        do not exist yet."""
        now = self.clock() if now_s is None else now_s
        if not self.warmed:
            await self.warm_up(now - self.config.interval_s)
        records = await self.observer.refresh(now)
        pools = await self.pools()
        if pools is None:
            return None
        workers = await self.observer.workers()
        stats = window_stats(records, now - self.config.interval_s, now, self.config.sla.percentile)
        decision = self.planner.on_tick(tick_from(stats, *pools, workers))
        applied = True
        for role in Role:
            p = decision.pool(role)
            desired = pools[0].desired if role is Role.PREFILL else pools[1].desired
            if p.desired_groups != desired:
                try:
                    await asyncio.to_thread(
                        self.kube.scale_pool, self.namespace, self.name, role, p.desired_groups
                    )
                except Exception:
                    log.exception("%s/%s: scaling %s to %d failed", *self.key, role.value, p.desired_groups)
                    applied = False
        result = TickResult(stats, decision, applied)
        self.last = result
        self.metrics.record(self.namespace, self.name, stats, decision, applied)
        await self.redis.xadd(
            self.keys.planner_decisions(),
            {"json": json.dumps(decision_record(stats, decision, applied))},
            maxlen=DECISIONS_MAXLEN,
            approximate=True,
        )
        await asyncio.to_thread(
            self.kube.patch_last_decision, self.namespace, self.name, last_decision_status(decision, applied)
        )
        return result

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


async def read_events(redis: Any, keys: DeploymentKeys, count: int = 200) -> list[dict[str, Any]]:
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
