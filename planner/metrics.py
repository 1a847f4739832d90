"""Expose: the planner's Prometheus metrics, `moeplane_planner_*`, labelled by deployment.

A private registry (not the process-global one), so two services in one process (tests) and the
frontend's own metrics never collide.
"""

from __future__ import annotations

from moeplane.api.enums import Role
from moeplane.planner.observe import WindowStats
from moeplane.planner.tick import Decision
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

_DEP = ("namespace", "deployment")
_POOL = (*_DEP, "pool")


class PlannerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.observed_rate = Gauge(
            "moeplane_planner_observed_requests_per_second",
            "Arrival rate over the last interval.",
            _DEP,
            registry=r,
        )
        self.predicted_rate = Gauge(
            "moeplane_planner_predicted_requests_per_second",
            "Forecast arrival rate sized for.",
            _DEP,
            registry=r,
        )
        self.observed_isl = Gauge(
            "moeplane_planner_observed_isl_tokens", "Mean prompt tokens.", _DEP, registry=r
        )
        self.observed_osl = Gauge(
            "moeplane_planner_observed_osl_tokens", "Mean output tokens.", _DEP, registry=r
        )
        self.observed_latency = Gauge(
            "moeplane_planner_observed_latency_ms",
            "TTFT (prefill) or ITL (decode) at the SLA percentile over the last interval.",
            _POOL,
            registry=r,
        )
        self.estimated_latency = Gauge(
            "moeplane_planner_estimated_latency_ms",
            "Model TTFT (prefill) or ITL (decode) at the decided size and forecast load.",
            _POOL,
            registry=r,
        )
        self.replicas = Gauge(
            "moeplane_planner_replicas", "EP groups observed (ready + starting).", _POOL, registry=r
        )
        self.desired = Gauge("moeplane_planner_desired_replicas", "EP groups decided.", _POOL, registry=r)
        self.gpus = Gauge("moeplane_planner_gpus", "GPUs of the decided size.", _POOL, registry=r)
        self.correction = Gauge(
            "moeplane_planner_correction", "Observed/model latency factor.", _POOL, registry=r
        )
        self.decisions = Counter(
            "moeplane_planner_decisions", "Decisions made, by outcome.", (*_DEP, "outcome"), registry=r
        )
        self.errors = Counter("moeplane_planner_tick_errors", "Ticks that failed.", _DEP, registry=r)

    def record(
        self, namespace: str, name: str, stats: WindowStats, decision: Decision, applied: bool
    ) -> None:
        dep = (namespace, name)
        self.observed_rate.labels(*dep).set(stats.load.arrival_rate_per_s)
        self.predicted_rate.labels(*dep).set(decision.forecast.arrival_rate_per_s)
        self.observed_isl.labels(*dep).set(stats.load.isl_tokens_mean)
        self.observed_osl.labels(*dep).set(stats.load.osl_tokens_mean)
        for role in (Role.PREFILL, Role.DECODE):
            p = decision.pool(role)
            labels = (*dep, role.value)
            seen = stats.ttft_at_sla_ms if role is Role.PREFILL else stats.itl_at_sla_ms
            if seen is not None:
                self.observed_latency.labels(*labels).set(seen)
            self.estimated_latency.labels(*labels).set(p.estimated_latency_ms)
            self.replicas.labels(*labels).set(p.current_groups)
            self.desired.labels(*labels).set(p.desired_groups)
            self.gpus.labels(*labels).set(p.gpus)
            self.correction.labels(*labels).set(p.correction)
        changed = decision.prefill.changed or decision.decode.changed
        outcome = "hold" if not changed else ("scaled" if applied else "not_applied")
        self.decisions.labels(*dep, outcome).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
