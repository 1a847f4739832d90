"""`moeplane planner`: the aiohttp service. Follows the deployments its `DeploymentSource` reports
(MoEDeployments in Kubernetes, the manifest in embedded mode), runs one `DeploymentPlanner` per
deployment with `spec.planner.enabled`, and serves /healthz, /metrics, the JSON API and the
dashboard. Handlers are thin: the logic is in deployment.py, tuning.py, whatif.py and views.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from moeplane.api.enums import Role
from moeplane.api.errors import SpecInvalid
from moeplane.planner.adapters import DeploymentEvent, DeploymentSource, EventKind, PoolScaler, SourceError
from moeplane.planner.kube import AUDIT_ANNOTATION
from moeplane.planner.metrics import PlannerMetrics
from moeplane.planner.service import views
from moeplane.planner.service.deployment import DECISIONS_MAXLEN, DeploymentPlanner, read_events
from moeplane.planner.service.tuning import TuningError, parse_tuning, proposed_spec
from moeplane.planner.service.whatif import WhatIfError, what_if

from moeplane.bus.keys import DeploymentKeys

log = logging.getLogger(__name__)
REDIS_TIMEOUT_S = 30.0


@dataclass
class ServiceConfig:
    redis_url: str
    namespaces: list[str] = field(default_factory=list)  # empty: every namespace
    dashboard_token: str | None = None
    kubeconfig: str | None = None
    tick: bool = True  # run the interval loops (tests drive ticks by hand)


class PlannerService:
    """Plans every deployment its `source` reports, scaling through `pools`."""

    def __init__(
        self, config: ServiceConfig, source: DeploymentSource | None = None, pools: PoolScaler | None = None
    ) -> None:
        import redis.asyncio as aioredis

        if source is None or pools is None:
            from moeplane.planner.kube import kube_adapters

            source, pools = kube_adapters(config.kubeconfig, config.namespaces)
        self.config = config
        self.source: DeploymentSource = source
        self.pools: PoolScaler = pools
        # redis-py's default 5 s read timeout is too short for a 2,000-record XRANGE on a busy
        # node; the planner would skip a tick for it. A dead Redis still fails the tick.
        self.redis = aioredis.from_url(config.redis_url, socket_timeout=REDIS_TIMEOUT_S)
        self.metrics = PlannerMetrics()
        self.deployments: dict[tuple[str, str], DeploymentPlanner] = {}
        self.invalid: dict[tuple[str, str], str] = {}
        self.synced = asyncio.Event()
        self._events: asyncio.Task[None] | None = None
        self._sync_redis: Any = None
        self._stopping: set[asyncio.Future[None]] = set()

    # ---- the deployments ----------------------------------------------------------------------
    async def start(self) -> None:
        self._events = asyncio.create_task(self._follow(), name="planner-deployments")

    async def _follow(self) -> None:
        async for batch in self.source.events():
            try:
                self.apply_events(batch)
            except Exception:  # one bad batch must not stop the planner
                log.exception("planner: applying deployment events failed")
            self.synced.set()

    def apply_events(self, batch: list[DeploymentEvent]) -> None:
        """Start, update or stop deployment planners; a SYNCED batch is the whole set."""
        if any(e.kind is EventKind.SYNCED for e in batch):
            keep = {e.key for e in batch}
            for key in [k for k in self.deployments if k not in keep]:
                self._drop(key)
            self.invalid = {k: v for k, v in self.invalid.items() if k in keep}
        for event in batch:
            if event.kind is EventKind.DELETED:
                self._drop(event.key)
                self.invalid.pop(event.key, None)
            else:
                self._upsert(event)

    def _upsert(self, event: DeploymentEvent) -> None:
        key = event.key
        if event.deployment is None:
            self.invalid[key] = event.error or "not a MoEDeployment"
            log.warning("%s/%s: not planned: %s", *key, self.invalid[key])
            return
        deployment = event.deployment
        current = self.deployments.get(key)
        try:
            if current is not None:
                if not current.update(deployment):
                    self._drop(key)
                self.invalid.pop(key, None)
                return
            if not deployment.spec.planner.enabled:
                return
            planner = DeploymentPlanner(deployment, self.source, self.pools, self.redis, self.metrics)
        except (SpecInvalid, ValueError) as exc:
            self.invalid[key] = str(exc)
            log.warning("%s/%s: not planned: %s", *key, exc)
            return
        self.invalid.pop(key, None)
        self.deployments[key] = planner
        if self.config.tick:
            planner.start()

    def _drop(self, key: tuple[str, str]) -> None:
        planner = self.deployments.pop(key, None)
        if planner is not None:
            fut = asyncio.ensure_future(planner.stop())
            self._stopping.add(fut)
            fut.add_done_callback(self._stopping.discard)

    async def stop(self) -> None:
        if self._events is not None:
            self._events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events
        for planner in list(self.deployments.values()):
            await planner.stop()
        await self.source.close()
        await self.redis.aclose()
        if self._sync_redis is not None:
            self._sync_redis.close()

    def sync_redis(self) -> Any:
        """A bytes-mode synchronous client for the EPLB store (binary windows)."""
        if self._sync_redis is None:
            import redis

            self._sync_redis = redis.Redis.from_url(self.config.redis_url)
        return self._sync_redis

    # ---- HTTP -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/api/deployments", self.list_deployments)
        app.router.add_get("/api/deployments/{namespace}/{name}/series", self.series)
        app.router.add_post("/api/deployments/{namespace}/{name}/whatif", self.whatif)
        app.router.add_post("/api/deployments/{namespace}/{name}/apply", self.apply)
        app.router.add_get("/", _to_dashboard)
        app.router.add_get("/dashboard", views.dashboard)
        app.router.add_get("/static/plotly.min.js", views.plotly_js)
        app.on_startup.append(lambda _: self.start())
        app.on_cleanup.append(lambda _: self.stop())
        return app

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "synced": self.synced.is_set(), "deployments": len(self.deployments)}
        )

    async def prometheus(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), content_type="text/plain", charset="utf-8")

    async def list_deployments(self, _: web.Request) -> web.Response:
        planners = sorted(self.deployments.values(), key=lambda p: p.key)
        await asyncio.gather(*(p.pools() for p in planners), return_exceptions=True)
        out = [views.summary(p) for p in planners]
        invalid = [{"namespace": k[0], "name": k[1], "error": e} for k, e in sorted(self.invalid.items())]
        return web.json_response({"deployments": out, "invalid": invalid})

    def _planner(self, request: web.Request) -> DeploymentPlanner:
        key = (request.match_info["namespace"], request.match_info["name"])
        planner = self.deployments.get(key)
        if planner is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no planned MoEDeployment {key[0]}/{key[1]}"}),
                content_type="application/json",
            )
        return planner

    async def series(self, request: web.Request) -> web.Response:
        planner = self._planner(request)
        window_s = _float_query(request, "windowSeconds", 1800.0, 60.0, 86400.0)
        heatmap_s = _float_query(request, "heatmapSeconds", window_s, 10.0, 86400.0)
        now = time.time()
        records = await planner.observer.refresh(now)
        events = await read_events(self.redis, planner.keys)
        eplb = await asyncio.to_thread(views.eplb_view, self.sync_redis(), planner.keys)
        for role in Role:
            planner.expert_load.add(role, eplb[role.value].pop("_matrix"), now)
        workers = await planner.observer.workers()
        with contextlib.suppress(SourceError):
            await planner.pools()
        return web.json_response(
            views.series(planner, records, events, eplb, workers, now, window_s, heatmap_s)
        )

    async def _body(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TuningError("body", f"not JSON: {exc}") from None

    async def whatif(self, request: web.Request) -> web.Response:
        planner = self._planner(request)
        body = await self._body(request)
        raw_window = body.pop("windowSeconds", None) if isinstance(body, dict) else None
        tuning = parse_tuning(body)
        window_s = _window(raw_window, planner.observer.history_s)
        obj = await self.source.get(planner.namespace, planner.name)
        proposed = proposed_spec(obj, tuning)
        now = time.time()
        records = await planner.observer.refresh(now)
        window = window_s or min(1800.0, max(10 * planner.config.interval_s, 60.0))
        # A deployment quiet for the whole window replays the last window that had traffic.
        last_at = max((r.arrived_at_s for r in records), default=None)
        if last_at is not None and last_at < now - window:
            now = last_at + 1e-3
        try:
            result = await asyncio.to_thread(
                what_if,
                planner.deployment.spec,
                proposed,
                planner.models,
                records,
                now,
                window,
                planner.config.interval_s,
            )
        except WhatIfError as exc:
            raise TuningError("windowSeconds", str(exc)) from None
        return web.json_response(result)

    async def apply(self, request: web.Request) -> web.Response:
        planner = self._planner(request)
        token = self.config.dashboard_token
        given = request.headers.get("Authorization", "")
        if not token or not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return web.json_response(
                {"error": "Apply needs the dashboard's bearer token (Authorization: Bearer …)"}, status=401
            )
        tuning = parse_tuning(await self._body(request))
        obj = await self.source.get(planner.namespace, planner.name)
        proposed_spec(obj, tuning)  # refuse what the API would refuse, with the field
        patch = tuning.spec_patch()
        if not patch:
            raise TuningError("body", "no setting to change")
        audit = {
            "kind": "sla_change",
            "at": datetime.now(UTC).isoformat(),
            "by": "dashboard",
            "remote": request.remote or "",
            "patch": patch,
        }
        updated = await self.source.patch_spec(
            planner.namespace,
            planner.name,
            {
                "metadata": {"annotations": {AUDIT_ANNOTATION: json.dumps(audit, sort_keys=True)}},
                "spec": patch,
            },
        )
        await self.redis.xadd(
            DeploymentKeys(planner.namespace, planner.name).planner_decisions(),
            {"json": json.dumps(audit)},
            maxlen=DECISIONS_MAXLEN,
            approximate=True,
        )
        # The embedded back end patches an in-memory spec, not a CR, and the answer says so.
        return web.json_response(
            {
                "applied": patch,
                "generation": updated.get("metadata", {}).get("generation"),
                "target": self.source.apply_target,
            }
        )


def _window(raw: object, most_s: float) -> float:
    """The what-if window: given, or 0 for the default; at most the history the observer keeps."""
    if raw in (None, ""):
        return 0.0
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TuningError("windowSeconds", f"not a number: {raw!r}") from None
    if not 10 <= value <= most_s:
        raise TuningError("windowSeconds", f"must be in [10, {most_s:g}] seconds, got {value:g}")
    return value


def _float_query(request: web.Request, name: str, default: float, lo: float, hi: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise TuningError(name, f"not a number: {raw!r}") from None
    if not lo <= value <= hi:
        raise TuningError(name, f"must be in [{lo:g}, {hi:g}], got {value:g}")
    return value


async def _to_dashboard(_: web.Request) -> web.Response:
    raise web.HTTPFound("/dashboard")


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except TuningError as exc:
        return web.json_response({"error": str(exc), "field": exc.field}, status=400)
    except SourceError as exc:
        return web.json_response({"error": str(exc)}, status=502)
