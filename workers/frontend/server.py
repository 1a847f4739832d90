"""`FrontendServer`: the frontend's parts wired together and listening (the process edge).

Owns the Redis client, the registry cache, the metrics-stream writer, the gRPC client pool, the
admission queue (in the pipeline, sized by `ServingLimits`) and the aiohttp runner, and starts
and stops them in order. Handlers are cancelled when their client
disconnects (`handler_cancellation`), which is what cancels a non-streaming request upstream.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from moeplane.workers.frontend.app import Frontend, FrontendConfig
from moeplane.workers.frontend.backend import ClientPool
from moeplane.workers.frontend.metrics import FrontendMetrics
from moeplane.workers.frontend.pipeline import Pipeline
from moeplane.workers.frontend.router import RegistryCache
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.model.tokenizer import Tokenizer
from moeplane.workers.serving.limits import ServingLimits

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import DEFAULT_TTL_S, WorkerRegistry
from moeplane.bus.request_metrics import DEFAULT_MAXLEN, RequestMetricsWriter


class FrontendServer:
    def __init__(
        self,
        config: FrontendConfig,
        redis_url: str,
        keys: DeploymentKeys,
        tokenizer: Tokenizer,
        security: GrpcSecurity | None = None,
        registry_ttl_s: float = DEFAULT_TTL_S,
        registry_refresh_s: float = 0.5,
        metrics_maxlen: int = DEFAULT_MAXLEN,
        limits: ServingLimits | None = None,
        drain_timeout_s: float = 0.0,
    ) -> None:
        """`drain_timeout_s`: how long `stop()` lets requests in flight or queued finish."""
        if limits is None:  # the default queue, with the config's length and timeout
            limits = ServingLimits(
                max_model_len=config.max_model_len, request_timeout_s=config.request_timeout_s,
                queue_timeout_s=min(ServingLimits.queue_timeout_s, config.request_timeout_s),
            )
        if limits.request_timeout_s != config.request_timeout_s:
            raise ValueError(
                f"limits.request_timeout_s ({limits.request_timeout_s}) differs from the frontend config's "
                f"({config.request_timeout_s})"
            )
        if drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s ({drain_timeout_s}) must be >= 0")
        self.drain_timeout_s = drain_timeout_s
        self.config = config
        self.redis = async_redis(redis_url)
        self.registry = WorkerRegistry(self.redis, keys, ttl_s=registry_ttl_s)
        self.cache = RegistryCache(self.registry, refresh_s=registry_refresh_s)
        self.writer = RequestMetricsWriter(self.redis, keys, maxlen=metrics_maxlen)
        self.clients = ClientPool(security)
        self.metrics = FrontendMetrics(max_model_len=config.max_model_len)
        self.pipeline = Pipeline(
            self.cache, self.clients, self.metrics, self.writer, decoder=tokenizer, limits=limits
        )
        self.metrics.bind(
            self.cache.counts, lambda: self.cache.staleness_s, lambda: self.writer.num_dropped,
            all_groups=self.cache.all_groups, num_queued=lambda: self.pipeline.admission.num_waiting,
            model=config.served_model,
        )
        self.frontend = Frontend(config, self.pipeline, tokenizer)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0: any free port); returns the base URL."""
        await self.cache.refresh()
        self.cache.start()
        self.writer.start()
        # On cleanup the runner waits for the handlers in flight up to its shutdown timeout: the
        # drain, plus a moment for the 503s of requests still queued when it ends.
        runner = web.AppRunner(
            self.frontend.app(), handler_cancellation=True, access_log=None,
            shutdown_timeout=self.drain_timeout_s + 2.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound = runner.addresses[0][1]
        self.url = f"http://{host}:{bound}"
        return self.url

    def drain(self, reason: str) -> None:
        """Stop advertising readiness (/health 503 `draining`) but keep serving: a Service's
        endpoints and its clients learn of a terminating pod only after a while."""
        self.frontend.draining = reason

    async def stop(self, hurry: bool = False) -> None:
        """Stop listening, then give the requests in flight and in the admission queue the drain
        timeout to finish (none when `hurry`); after it, what still waits for capacity gets a 503
        (another frontend replica may serve it) and what still runs is cancelled."""
        close = asyncio.get_running_loop().call_later(
            0.0 if hurry else self.drain_timeout_s,
            self.pipeline.admission.close, "this frontend is shutting down; retry",
        )
        if self._runner is not None:
            await self._runner.cleanup()  # stops accepting, waits for the handlers, cancels the rest
            self._runner = None
        close.cancel()
        self.pipeline.admission.close("this frontend is shutting down; retry")
        await self.cache.stop()
        await self.writer.stop()
        await self.clients.close()
        await self.redis.aclose()
