"""`moeplane planner`: the aiohttp service. Watches MoEDeployments, runs one `DeploymentPlanner`
per deployment with `spec.planner.enabled`, and serves /healthz, /metrics, the JSON API and the
dashboard. Handlers are thin: the logic is in deployment.py, tuning.py, whatif.py and views.py.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from moeplane.api.errors import SpecInvalid
from moeplane.planner.connectors import PoolBackend
from moeplane.planner.kube import AUDIT_ANNOTATION, DEPLOYMENTS, POOLS, KubeClient, KubeError, WatchEvent
from moeplane.planner.metrics import PlannerMetrics
from moeplane.planner.service import views
from moeplane.planner.service.deployment import DECISIONS_MAXLEN, DeploymentPlanner, read_events
from moeplane.planner.service.tuning import TuningError, parse_tuning, proposed_spec
from moeplane.planner.service.whatif import WhatIfError, what_if

from moeplane.bus.keys import DeploymentKeys

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 30


@dataclass
class ServiceConfig:
    redis_url: str
    namespaces: list[str] = field(default_factory=list)  # empty: every namespace
    dashboard_token: str | None = None
    kubeconfig: str | None = None
    tick: bool = True  # run the interval loops (tests drive ticks by hand)
    # Watches end (and relist) this often; stopping waits for the current one to end.
    watch_timeout_s: int = WATCH_TIMEOUT_S


class ServiceBackend(PoolBackend, Protocol):
    """What the service needs besides the pools: `KubeClient`, or the embedded stack's
    `moeplane.planner.embedded.EmbeddedBackend` (the CR kept in memory)."""

    def list_objects(self, plural: str, namespace: str | None) -> tuple[list[dict[str, Any]], str]: ...

    def watch_objects(
        self,
        plural: str,
        namespace: str | None,
        resource_version: str,
        timeout_s: int,
        stop: Callable[[], bool],
    ) -> Iterator[WatchEvent]: ...

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]: ...

    def patch_spec(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...


class PlannerService:
    def __init__(self, config: ServiceConfig, kube: ServiceBackend | None = None) -> None:
        import redis.asyncio as aioredis

        self.config = config
        self.kube: ServiceBackend = kube or KubeClient.from_environment(config.kubeconfig)
        self.redis = aioredis.from_url(config.redis_url)
        self.metrics = PlannerMetrics()
        self.deployments: dict[tuple[str, str], DeploymentPlanner] = {}
        self.invalid: dict[tuple[str, str], str] = {}
        self.pools: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync_redis: Any = None
        self._stopping: set[asyncio.Future[None]] = set()

    # ---- the watch ------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        scopes: list[str | None] = list(self.config.namespaces) or [None]
        watches = [(plural, ns) for plural in (DEPLOYMENTS, POOLS) for ns in scopes]
        pending = len(watches)
        lock = threading.Lock()

        def listed() -> None:
            nonlocal pending
            with lock:
                pending -= 1
                if pending == 0 and self._loop is not None:
                    self._loop.call_soon_threadsafe(self.synced.set)

        for plural, ns in watches:
            t = threading.Thread(
                target=self._watch, args=(plural, ns, listed), name=f"planner-{plural}-{ns}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def _watch(self, plural: str, namespace: str | None, listed: Any) -> None:
        """List, then watch from the list's version; relist when the watch ends or fails."""
        first = True
        while not self._stop.is_set():
            try:
                items, version = self.kube.list_objects(plural, namespace)
                self._post(plural, "SYNC", {"namespace": namespace, "items": items})
                if first:
                    listed()
                    first = False
                for event in self.kube.watch_objects(
                    plural, namespace, version, self.config.watch_timeout_s, self._stop.is_set
                ):
                    self._post(plural, event.kind, event.obj)
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("watching %s in %s failed; relisting", plural, namespace or "all namespaces")
                self._stop.wait(1.0)

    def _post(self, plural: str, kind: str, obj: dict[str, Any]) -> None:
        if self._loop is not None and not self._stop.is_set():
            handler = self._on_event if plural == DEPLOYMENTS else self._on_pool_event
            self._loop.call_soon_threadsafe(handler, kind, obj)

    def _on_pool_event(self, kind: str, obj: dict[str, Any]) -> None:
        """The pools as last seen, for the dashboard (ticks read them fresh)."""
        if kind == "SYNC":
            ns = obj["namespace"]
            self.pools = {k: v for k, v in self.pools.items() if ns is not None and k[0] != ns}
            for item in obj["items"]:
                self.pools[self._key(item)] = item
        elif kind == "DELETED":
            self.pools.pop(self._key(obj), None)
        elif kind in ("ADDED", "MODIFIED"):
            self.pools[self._key(obj)] = obj

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "SYNC":
            seen = set()
            for item in obj["items"]:
                seen.add(self._key(item))
                self._upsert(item)
            for key in [k for k in self.deployments if obj["namespace"] in (None, k[0]) and k not in seen]:
                self._drop(key)
            return
        if kind == "DELETED":
            self._drop(self._key(obj))
        elif kind in ("ADDED", "MODIFIED"):
            self._upsert(obj)

    @staticmethod
    def _key(obj: dict[str, Any]) -> tuple[str, str]:
        meta = obj.get("metadata", {})
        return str(meta.get("namespace", "default")), str(meta.get("name", ""))

    def _upsert(self, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        enabled = bool(((obj.get("spec") or {}).get("planner") or {}).get("enabled", True))
        current = self.deployments.get(key)
        try:
            if current is not None:
                if not current.update(obj):
                    self._drop(key)
                return
            if not enabled:
                return
            planner = DeploymentPlanner(obj, self.kube, self.redis, self.metrics)
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
        self._stop.set()
        for planner in list(self.deployments.values()):
            await planner.stop()
        # A watch blocked on a quiet stream ends at its timeout; the threads are daemons, so the
        # process need not wait that long to exit.
        for t in self._threads:
            await asyncio.to_thread(t.join, min(2.0, self.config.watch_timeout_s + 1.0))
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
        out = [views.summary(p, self.pools) for p in sorted(self.deployments.values(), key=lambda p: p.key)]
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
        now = time.time()
        records = await planner.observer.refresh(now)
        events = await read_events(self.redis, planner.keys)
        eplb = await asyncio.to_thread(views.eplb_view, self.sync_redis(), planner.keys)
        return web.json_response(views.series(planner, records, events, eplb, now, window_s, self.pools))

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
        obj = await asyncio.to_thread(self.kube.get_deployment, planner.namespace, planner.name)
        proposed = proposed_spec(obj, tuning)
        now = time.time()
        records = await planner.observer.refresh(now)
        window = window_s or min(1800.0, max(10 * planner.config.interval_s, 60.0))
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
        obj = await asyncio.to_thread(self.kube.get_deployment, planner.namespace, planner.name)
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
        updated = await asyncio.to_thread(
            self.kube.patch_spec,
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
        target = getattr(self.kube, "apply_target", "the MoEDeployment")
        return web.json_response(
            {"applied": patch, "generation": updated.get("metadata", {}).get("generation"), "target": target}
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
    except KubeError as exc:
        return web.json_response({"error": str(exc)}, status=502)
