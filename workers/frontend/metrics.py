"""Prometheus metrics of the frontend (served at /metrics in the text exposition format).

Two vocabularies for the same quantities: moeplane's own (`moeplane_frontend_*`), and vLLM's
(`vllm:*`, with vLLM's `model_name` label and buckets, as vLLM's `v1/metrics/loggers.py` defines
them), so vLLM's dashboards and alerts work unchanged. Request-level histograms and counters are
observed as each request finishes (`observe_request`); the engine-level gauges (running, waiting,
KV-cache usage, preemptions) and the per-group health are read at scrape time from the registry
cache (heartbeats carry each group's numbers) and the admission queue.

Each frontend owns its `CollectorRegistry`, so two frontends in one process (tests, bench) never
share counters. Latency histograms are in seconds, as Prometheus convention asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from moeplane.api.enums import Role
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from moeplane.bus.registry import GroupState, WorkerGroup

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# vLLM's buckets (vllm/v1/metrics/loggers.py).
VLLM_TTFT_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0, 160.0, 640.0, 2560.0,
)
VLLM_ITL_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
VLLM_REQUEST_LATENCY_BUCKETS_S = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
    960.0, 1920.0, 7680.0,
)


def build_1_2_5_buckets(max_value: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value` (vLLM's token-count buckets)."""
    out: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return tuple(out)
            out.append(value)
        exponent += 1


@dataclass(frozen=True)
class RequestSample:
    """One finished request, as the metrics see it."""

    model: str
    endpoint: str
    status: str  # RequestStatus
    finish_reason: str | None  # FinishReason
    prompt_tokens: int
    output_tokens: int
    e2e_s: float
    ttft_s: float | None
    queue_s: float | None


# vLLM's `finished_reason` label values.
_VLLM_FINISHED = {"stop": "stop", "length": "length", "cancelled": "abort"}


class FrontendMetrics:
    def __init__(self, max_model_len: int = 2048) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "moeplane_frontend_requests", "Finished requests by endpoint and outcome.",
            ["model", "endpoint", "status"], registry=r,
        )
        self.responses = Counter(
            "moeplane_frontend_http_responses", "HTTP responses by route and status code (4xx and 5xx too).",
            ["route", "code"], registry=r,
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
            "moeplane_frontend_queue_seconds",
            "Arrival to the start of prefill: the frontend's admission queue, then the prefill group's.",
            ["model"], buckets=_LATENCY_BUCKETS_S, registry=r,
        )
        self.retries = Counter(
            "moeplane_frontend_retries", "Requests moved to another group (or group run) after a failure.",
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
        # ---- vLLM's names for the same quantities --------------------------------------------------
        tokens = build_1_2_5_buckets(max_model_len)
        self.vllm_ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            ["model_name"], buckets=VLLM_TTFT_BUCKETS_S, registry=r,
        )
        self.vllm_itl = Histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            ["model_name"], buckets=VLLM_ITL_BUCKETS_S, registry=r,
        )
        self.vllm_e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
            ["model_name"], buckets=VLLM_REQUEST_LATENCY_BUCKETS_S, registry=r,
        )
        self.vllm_queue = Histogram(
            "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
            ["model_name"], buckets=VLLM_REQUEST_LATENCY_BUCKETS_S, registry=r,
        )
        self.vllm_prompt_len = Histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", ["model_name"],
            buckets=tokens, registry=r,
        )
        self.vllm_generation_len = Histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", ["model_name"],
            buckets=tokens, registry=r,
        )
        self.vllm_prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", ["model_name"], registry=r
        )
        self.vllm_generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", ["model_name"], registry=r
        )
        self.vllm_success = Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            ["model_name", "finished_reason"], registry=r,
        )

    def bind(
        self,
        live_groups: Callable[[], dict[Role, int]],
        staleness_s: Callable[[], float],
        dropped: Callable[[], int],
        all_groups: Callable[[], list[WorkerGroup]] | None = None,
        num_queued: Callable[[], int] | None = None,
        model: str = "",
    ) -> None:
        """Gauges read at scrape time from the router, the admission queue and the metrics writer."""
        for role in Role:
            self.live_groups.labels(role=str(role)).set_function(_count_of(live_groups, role))
        self.registry_staleness.set_function(staleness_s)
        self.metrics_dropped.set_function(dropped)
        if all_groups is not None:
            self.registry.register(_GroupCollector(all_groups, num_queued or (lambda: 0), model))

    def observe_request(self, s: RequestSample) -> None:
        """A finished request, in both vocabularies."""
        self.requests.labels(model=s.model, endpoint=s.endpoint, status=s.status).inc()
        self.prompt_tokens.labels(model=s.model).inc(s.prompt_tokens)
        self.generation_tokens.labels(model=s.model).inc(s.output_tokens)
        self.e2e.labels(model=s.model).observe(s.e2e_s)
        self.vllm_prompt_tokens.labels(model_name=s.model).inc(s.prompt_tokens)
        self.vllm_generation_tokens.labels(model_name=s.model).inc(s.output_tokens)
        self.vllm_e2e.labels(model_name=s.model).observe(s.e2e_s)
        self.vllm_prompt_len.labels(model_name=s.model).observe(s.prompt_tokens)
        self.vllm_generation_len.labels(model_name=s.model).observe(s.output_tokens)
        if s.ttft_s is not None:
            self.ttft.labels(model=s.model).observe(s.ttft_s)
            self.vllm_ttft.labels(model_name=s.model).observe(s.ttft_s)
        if s.queue_s is not None:
            self.queue.labels(model=s.model).observe(s.queue_s)
            self.vllm_queue.labels(model_name=s.model).observe(s.queue_s)
        reason = _VLLM_FINISHED.get(s.finish_reason or "")
        if (s.status == "ok" and reason is not None) or s.status in ("cancelled", "timeout"):
            self.vllm_success.labels(model_name=s.model, finished_reason=reason or "abort").inc()

    def observe_gap(self, model: str, gap_s: float) -> None:
        """The gap between two output tokens of a stream."""
        self.itl.labels(model=model).observe(gap_s)
        self.vllm_itl.labels(model_name=model).observe(gap_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _GroupCollector(Collector):
    """At scrape time, from the registry cache: vLLM's engine gauges summed over the groups, and
    moeplane's per-group state, restarts and KV usage."""

    def __init__(
        self, groups: Callable[[], list[WorkerGroup]], queued: Callable[[], int], model: str
    ) -> None:
        self._groups = groups
        self._queued = queued
        self._model = model

    def collect(self) -> Iterator[Metric]:
        groups = self._groups()
        serving = [g for g in groups if g.state in (GroupState.LIVE, GroupState.DRAINING)]
        decode = [g for g in serving if g.role is Role.DECODE]
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Number of requests in model execution batches.",
            labels=["model_name"],
        )
        running.add_metric([self._model], sum(g.num_running for g in serving))
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed (the frontend's queue and the ranks' queues).",
            labels=["model_name"],
        )
        waiting.add_metric([self._model], self._queued() + sum(g.num_waiting for g in serving))
        usage = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "KV-cache usage of the decode groups. 1 means 100 percent usage.",
            labels=["model_name"],
        )
        total = sum(g.kv_blocks_total for g in decode)
        used = sum(g.kv_blocks_total - g.kv_blocks_free for g in decode)
        usage.add_metric([self._model], used / total if total else 0.0)
        preemptions = CounterMetricFamily(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.", labels=["model_name"]
        )
        preemptions.add_metric([self._model], sum(g.num_preemptions for g in groups))
        yield from (running, waiting, usage, preemptions)

        state = GaugeMetricFamily(
            "moeplane_frontend_group_state", "1 for each registered group's current state.",
            labels=["group", "role", "state"],
        )
        restarts = CounterMetricFamily(
            "moeplane_frontend_group_restarts", "Times the group's supervisor restarted it.",
            labels=["group", "role"],
        )
        kv = GaugeMetricFamily(
            "moeplane_frontend_group_kv_usage_ratio", "Used KV blocks / all KV blocks of each group.",
            labels=["group", "role"],
        )
        for g in groups:
            for s in GroupState:
                state.add_metric([g.group_id, str(g.role), str(s)], 1.0 if g.state is s else 0.0)
            restarts.add_metric([g.group_id, str(g.role)], g.restarts)
            if g.state in (GroupState.LIVE, GroupState.DRAINING) and g.kv_blocks_total:
                kv.add_metric([g.group_id, str(g.role)], 1 - g.kv_blocks_free / g.kv_blocks_total)
        yield from (state, restarts, kv)


def _count_of(counts: Callable[[], dict[Role, int]], role: Role) -> Callable[[], float]:
    return lambda: counts()[role]
