"""The HTTP face of the emulator: kmock's KubernetesEmulator with its state engine replaced by
`ObjectStore`, and its request log bounded.

kmock still provides the aiohttp server, request parsing and its DSL, so a test can intercept any
request first (`emulator['patch', kmock.resource('ray.io', 'v1', 'rayclusters')][:1] << 500`
injects one failure); everything it does not intercept is served from the store.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import dsl, rendering

from tests.kube import discovery, tables
from tests.kube.errors import ApiError, method_not_allowed, unauthorized
from tests.kube.http_requests import (
    ApiCall,
    Target,
    body_of,
    parse_request,
    parse_resource_path,
    predicate_of,
    verb_of,
)
from tests.kube.matching import view_matches
from tests.kube.store import ObjectStore, WatchEvent
from tests.kube.watch import serve_watch

__all__ = ["ApiCall", "KubeEmulator"]


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """An emulated API server. `tokens` maps bearer tokens to user names (empty: anyone is admin)."""

    tokens: dict[str, str] = attrs.field(factory=dict)
    log_size: int = 2000
    store: ObjectStore = attrs.field(factory=ObjectStore)
    calls: collections.deque[ApiCall] = attrs.field(init=False)
    rbac_seen: dict[str, set[tuple[str, str, str]]] = attrs.field(factory=dict, init=False)
    counters: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter, init=False)
    _served: int = attrs.field(default=0, init=False)
    _builtin_payloads: frozenset[int] = attrs.field(factory=frozenset, init=False)
    _sorted_cache: tuple[tuple[int, ...], list[dsl.Reaction]] = attrs.field(default=((), []), init=False)
    _watchers: set[asyncio.Queue[WatchEvent | None]] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock keeps every request forever and scans the whole log to match each new one, so its
        # latency grows with every request served; a bounded log keeps it flat.
        self._requests = collections.deque(maxlen=self.log_size)  # type: ignore[assignment]
        self.calls = collections.deque(maxlen=self.log_size)
        self._builtin_payloads = frozenset(id(p) for p in self._payloads)
        self.store.subscribe(self._broadcast)

    # ---- kmock plumbing ---------------------------------------------------------------------------
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        await raw_request.read()
        self._served += 1
        request = await parse_request(raw_request, self._served)
        self._requests.append(request)
        try:
            return await self._handle(request)
        except ApiError as exc:
            return aiohttp.web.json_response(exc.status(), status=exc.code)

    def _user_reactions(self) -> list[dsl.Reaction]:
        ids = tuple(id(p) for p in self._payloads)
        if self._sorted_cache[0] != ids:
            mine = [p for p in self._payloads if id(p) not in self._builtin_payloads]
            mine.sort(key=lambda p: tuple(-x for x in p.priorities) or (0,))
            self._sorted_cache = (ids, mine)
        return self._sorted_cache[1]

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        user = self._authenticate(request)
        for reaction in self._user_reactions():
            if reaction._disabled.is_set() or not view_matches(reaction._source, request):
                continue
            try:
                response = await reaction(request)
            except rendering.ReactionMismatchError:
                reaction._disabled.set()
                continue
            except NotImplementedError:
                continue
            finally:
                if len(reaction._requests) > self.log_size:
                    del reaction._requests[: -self.log_size]
            self._record(request, user, response.status)
            return response
        return await self._route(request, user)

    # ---- identity and bookkeeping ---------------------------------------------------------------
    def _authenticate(self, request: rendering.Request) -> str:
        if not self.tokens:
            return "admin"
        # The scheme is case-insensitive, as the API server's bearer-token authenticator reads it
        # (the Python client's in-cluster configuration sends "bearer").
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        user = self.tokens.get(token)
        if user is None:
            raise unauthorized()
        return user

    def _record(self, request: rendering.Request, user: str, code: int) -> None:
        target = parse_resource_path(request.url.path)
        if target is None:
            return
        try:
            verb = verb_of(str(request.method.value), target, dict(request.params))
        except ApiError:
            verb = str(request.method.value).lower()
        call = ApiCall(
            user=user,
            verb=verb,
            group=target.group,
            version=target.version,
            resource=target.plural,
            subresource=target.subresource or "",
            namespace=target.namespace or "",
            name=target.name or "",
            code=code,
            at_s=time.time(),
        )
        self.calls.append(call)
        self.rbac_seen.setdefault(user, set()).add(call.rbac)
        self.counters[(user, verb)] += 1

    # ---- routing ----------------------------------------------------------------------------------
    async def _route(self, request: rendering.Request, user: str) -> aiohttp.web.StreamResponse:
        path = request.url.path.rstrip("/") or "/"
        target = parse_resource_path(path)
        try:
            if target is None or (request.method.value == "GET" and target.plural is None):
                body = self._serve_meta(path)
                return aiohttp.web.json_response(body)
            if request.method.value == "GET" and dict(request.params).get("watch") in ("true", "1"):
                # Recorded up front: a watch's response ends only when the stream does.
                self.store.registry.resolve(target.group, target.version, target.plural)
                self._record(request, user, 200)
                return await self._serve_resource(request, target)
            response = await self._serve_resource(request, target)
        except ApiError as exc:
            self._record(request, user, exc.code)
            return aiohttp.web.json_response(exc.status(), status=exc.code)
        self._record(request, user, response.status)
        return response

    def _serve_meta(self, path: str) -> Any:
        registry = self.store.registry
        segs = [s for s in path.split("/") if s]
        found: Any = None
        if path in ("/healthz", "/readyz", "/livez"):
            found = "ok"
        elif path == "/version":
            found = discovery.SERVER_VERSION
        elif path == "/api":
            found = discovery.api_versions()
        elif path == "/apis":
            found = discovery.api_group_list(registry)
        elif segs[:1] == ["api"] and len(segs) == 2:
            found = discovery.api_resource_list(registry, "", segs[1])
        elif segs[:1] == ["apis"] and len(segs) == 2:
            found = discovery.api_group(registry, segs[1])
        elif segs[:1] == ["apis"] and len(segs) == 3:
            found = discovery.api_resource_list(registry, segs[1], segs[2])
        elif path == "/openapi/v3":
            found = discovery.openapi_v3_index(registry)
        elif segs[:2] == ["openapi", "v3"] and segs[2:3] == ["api"] and len(segs) == 4:
            found = discovery.openapi_v3_document(registry, "", segs[3])
        elif segs[:2] == ["openapi", "v3"] and segs[2:3] == ["apis"] and len(segs) == 5:
            found = discovery.openapi_v3_document(registry, segs[3], segs[4])
        if found is None or found == {"openapi": "3.0.0"}:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return found

    async def _serve_resource(self, request: rendering.Request, t: Target) -> aiohttp.web.StreamResponse:
        d = self.store.registry.resolve(t.group, t.version, t.plural)
        params = dict(request.params)
        verb = verb_of(str(request.method.value), t, params)
        if d.namespaced is False and t.namespace:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        strict = params.get("fieldValidation", "").lower() == "strict"
        dry_run = params.get("dryRun") == "All"
        store = self.store
        if verb == "watch":
            return await serve_watch(self.store, self._watchers, request, d, t)
        if verb == "list":
            items, rv = store.list(d, t.namespace, predicate_of(params))
            if tables.wants_table(request.headers.get("Accept", "")):
                return aiohttp.web.json_response(tables.table(d, items, rv))
            return aiohttp.web.json_response(
                {
                    "kind": d.list_kind,
                    "apiVersion": d.api_version,
                    "metadata": {"resourceVersion": str(rv)},
                    "items": items,
                }
            )
        if verb == "create":
            if t.subresource:
                raise method_not_allowed(f"create is not supported on {t.subresource}")
            created = store.create(d, t.namespace, body_of(request), strict=strict, dry_run=dry_run)
            return aiohttp.web.json_response(created, status=201)
        if verb == "deletecollection":
            predicate = predicate_of(params)
            items, _ = store.list(d, t.namespace, predicate)
            for item in items:
                meta = item["metadata"]
                store.delete(d, meta.get("namespace"), meta["name"], dry_run=dry_run)
            return aiohttp.web.json_response(
                {"kind": d.list_kind, "apiVersion": d.api_version, "metadata": {}, "items": items}
            )
        assert t.name is not None
        if verb == "get":
            if t.subresource == "scale":
                return aiohttp.web.json_response(store.scale(d, t.namespace, t.name))
            obj = store.get(d, t.namespace, t.name)
            if tables.wants_table(request.headers.get("Accept", "")):
                return aiohttp.web.json_response(tables.table(d, [obj], store.resource_version))
            return aiohttp.web.json_response(obj)
        if verb == "update":
            if t.subresource == "scale":
                return aiohttp.web.json_response(
                    store.replace_scale(d, t.namespace, t.name, body_of(request), dry_run=dry_run)
                )
            return aiohttp.web.json_response(
                store.replace(
                    d,
                    t.namespace,
                    t.name,
                    body_of(request),
                    subresource=t.subresource,
                    strict=strict,
                    dry_run=dry_run,
                )
            )
        if verb == "patch":
            content_type = request.headers.get("Content-Type", "application/merge-patch+json")
            return aiohttp.web.json_response(
                store.patch(
                    d,
                    t.namespace,
                    t.name,
                    content_type,
                    body_of(request),
                    subresource=t.subresource,
                    strict=strict,
                    dry_run=dry_run,
                )
            )
        options = request.data if isinstance(request.data, dict) else {}
        propagation = params.get("propagationPolicy") or options.get("propagationPolicy") or "Background"
        if options.get("orphanDependents") is True:
            propagation = "Orphan"
        deleted = store.delete(
            d,
            t.namespace,
            t.name,
            propagation=propagation,
            preconditions=options.get("preconditions"),
            dry_run=dry_run,
        )
        return aiohttp.web.json_response(deleted)

    # ---- watches ------------------------------------------------------------------------------------
    def _broadcast(self, event: WatchEvent) -> None:
        for queue in list(self._watchers):
            queue.put_nowait(event)

    async def close_watches(self) -> None:
        """End every open watch stream (the server is going away, or a test simulates a disconnect)."""
        for queue in list(self._watchers):
            queue.put_nowait(None)
        await asyncio.sleep(0)
