"""Prometheus metrics of the frontend (served at /metrics in the text exposition format).

Each frontend owns its `CollectorRegistry`, so two frontends in one process (tests, bench) never
share counters. Latency histograms are in seconds, as Prometheus convention asks.
"""

from __future__ import annotations

from collections.abc import Callable

from moeplane.api.enums import Role
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class FrontendMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "moeplane_frontend_requests", "Finished requests by endpoint and outcome.",
            ["model", "endpoint", "status"], registry=r,
        )
        self.in_flight = Gauge(
            "moeplane_frontend_requests_in_flight", "Requests being served.", ["model"], registry=r
        )
        self.prompt_tokens = Counter(
            "moeplane_frontend_prompt_tokens", "Prompt tokens of served requests.", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "moeplane_frontend_generation_tokens", "Output tokens streamed.", ["model"], registry=r
        )
        self.ttft = Histogram(
            "moeplane_frontend_ttft_seconds", "Arrival to first output token.", ["model"],
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.itl = Histogram(
            "moeplane_frontend_itl_seconds", "Gap between consecutive output tokens.", ["model"],
            buckets=_ITL_BUCKETS_S, registry=r,
        )
        self.e2e = Histogram(
            "moeplane_frontend_e2e_seconds", "Arrival to the end of the response.", ["model"],
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.queue = Histogram(
            "moeplane_frontend_queue_seconds", "Arrival to the start of prefill.", ["model"],
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.retries = Counter(
            "moeplane_frontend_retries", "Requests moved to another group after a group failed.",
            ["stage"], registry=r,
        )
        self.live_groups = Gauge(
            "moeplane_frontend_live_groups", "Worker groups the router can use, by role.", ["role"],
            registry=r,
        )
        self.registry_staleness = Gauge(
            "moeplane_frontend_registry_staleness_seconds",
            "Seconds since the router last read the registry from Redis.", registry=r,
        )
        self.metrics_dropped = Gauge(
            "moeplane_frontend_request_metrics_dropped",
            "Per-request records dropped because Redis was away too long.", registry=r,
        )

    def bind(
        self,
        live_groups: Callable[[], dict[Role, int]],
        staleness_s: Callable[[], float],
        dropped: Callable[[], int],
    ) -> None:
        """Gauges read at scrape time from the router and the metrics writer."""
        for role in Role:
            self.live_groups.labels(role=str(role)).set_function(_count_of(live_groups, role))
        self.registry_staleness.set_function(staleness_s)
        self.metrics_dropped.set_function(dropped)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _count_of(counts: Callable[[], dict[Role, int]], role: Role) -> Callable[[], float]:
    return lambda: counts()[role]
