"""What a reconcile works with: the API client, a cache of the children it watches, the config.

Reads come from kopf's indexes (an informer-style cache filled by watch streams), so a resync
costs no API reads; writes go through `KubeApi`. Within one reconcile, what it wrote overlays
the cache, so a later step sees the child an earlier step just created.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import kopf
from moeplane.api.enums import Role
from moeplane.operator import names
from moeplane.operator.config import OperatorConfig
from moeplane.operator.diffing import DEFAULT_POLICY, Action, ChildPolicy, Create, Delete, Patch, plan_child
from moeplane.operator.groups import GroupBook
from moeplane.operator.kinds import RAYCLUSTER, Kind
from moeplane.operator.kube import ApiError, KubeApi
from moeplane.operator.status import EplbReading

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (plural, namespace, name)


class KindNotServed(Exception):
    """The API server does not serve a kind the operator must create (its CRD is not installed)."""

    def __init__(self, kind: Kind) -> None:
        hint = " (install the KubeRay operator)" if kind.group == "ray.io" else ""
        super().__init__(
            f"the API server does not serve {kind.plural}.{kind.group or 'core'}/{kind.version}{hint}"
        )
        self.kind = kind


class ChildCache(Protocol):
    def get(self, kind: Kind, namespace: str, name: str) -> Mapping[str, Any] | None: ...


class EventSink(Protocol):
    def warn(self, body: Mapping[str, Any], reason: str, message: str) -> None: ...


class EplbSource(Protocol):
    async def read(self, namespace: str, deployment: str, role: Role) -> EplbReading | None: ...


class _Cached:
    """Marker: look the child up in the cache."""


CACHED = _Cached()


def index_id(kind: Kind) -> str:
    return f"moeplane_{kind.plural}"


class IndexCache:
    """`ChildCache` over the kopf indexes a handler receives as keyword arguments."""

    def __init__(self, indexes: Mapping[str, Any]) -> None:
        self._indexes = indexes

    def get(self, kind: Kind, namespace: str, name: str) -> Mapping[str, Any] | None:
        index = self._indexes.get(index_id(kind))
        if index is None:
            return None
        store = index.get((namespace, name))
        return next(iter(store), None) if store is not None else None


class KopfEvents:
    def warn(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        # kopf reads only apiVersion, kind and metadata of the body it is given.
        kopf.warn(cast(kopf.Body, body), reason=reason, message=message)


@dataclass
class Counters:
    """How much work reconciles did (the benchmark reads these through the metrics log)."""

    reconciles: collections.Counter[str] = field(default_factory=collections.Counter)
    writes: collections.Counter[str] = field(default_factory=collections.Counter)


class Locks:
    """One lock per object: a handler and the timer never reconcile the same object at once."""

    def __init__(self) -> None:
        self._locks: dict[Key, asyncio.Lock] = {}

    def __call__(self, kind: Kind, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((kind.plural, namespace, name), asyncio.Lock())

    def forget(self, kind: Kind, namespace: str, name: str) -> None:
        self._locks.pop((kind.plural, namespace, name), None)


@dataclass
class Context:
    api: KubeApi
    cache: ChildCache
    config: OperatorConfig
    events: EventSink
    locks: Locks
    counters: Counters
    # Invalid-spec messages already posted as Events, per object: a handler and the timer may both
    # see a body from before the status write, and the Event must still be posted once.
    reported: dict[Key, str] = field(default_factory=dict)
    # Reads each pool's EPLB state from Redis for its status; None without a Redis.
    eplb: EplbSource | None = None
    # The worker registry and the drain requests (serving readiness, scale-down, rollouts); None
    # without a Redis: readiness then comes from KubeRay's ready pods.
    groups: GroupBook | None = None
    # The Secret patch last written per (namespace, name): Secrets are written, never read back.
    secrets_written: dict[tuple[str, str], str] = field(default_factory=dict)
    _written: dict[Key, Obj | None] = field(default_factory=dict)

    def lookup(self, kind: Kind, namespace: str, name: str) -> Mapping[str, Any] | None:
        key = (kind.plural, namespace, name)
        if key in self._written:
            return self._written[key]
        return self.cache.get(kind, namespace, name)

    async def rayclusters(self, namespace: str, pool_label: str) -> list[Obj]:
        """A pool's RayClusters, read fresh: status is computed from them, and a lagging watch cache
        must never make a Ready pool look unready again (an API response seen earlier can be newer
        than the cache)."""
        try:
            listed = await self.api.list(RAYCLUSTER, namespace, f"{names.POOL_LABEL}={pool_label}")
        except ApiError as exc:
            if exc.not_found:
                raise KindNotServed(RAYCLUSTER) from exc
            raise
        found = {str(rc["metadata"]["name"]): rc for rc in listed}
        for (plural, ns, name), body in self._written.items():
            if plural == RAYCLUSTER.plural and ns == namespace:
                labels = (body or {}).get("metadata", {}).get("labels") or {}
                if body is None:
                    found.pop(name, None)
                elif labels.get(names.POOL_LABEL) == pool_label:
                    found[name] = body
        return list(found.values())

    async def ensure(
        self,
        kind: Kind,
        desired: Obj,
        owner: Mapping[str, Any] | None,
        policy: ChildPolicy = DEFAULT_POLICY,
        live: Mapping[str, Any] | _Cached | None = CACHED,
        rebuild: Callable[[Mapping[str, Any] | None], Obj] | None = None,
    ) -> Obj:
        """Create the child if missing, patch what differs, or do nothing; return the live child.

        `live` is looked up in the cache unless the caller read it itself. `rebuild` makes the
        desired object again from a live one read after a create conflict (a Secret keeps the
        token it already holds).
        """
        meta = desired["metadata"]
        namespace, name = str(meta.get("namespace", "")), str(meta["name"])
        if isinstance(live, _Cached):
            live = self.lookup(kind, namespace, name)
        if owner is not None:
            kopf.adopt(desired, owner=dict(owner))  # type: ignore[arg-type]
        action = plan_child(kind, desired, live, policy)
        if action is None:
            assert live is not None
            return dict(live)
        try:
            return await self.apply(action)
        except ApiError as exc:
            if not (isinstance(action, Create) and exc.conflict):
                raise
        # The cache had not seen it yet (created moments ago, or before a restart): read and retry.
        live = await self.api.get(kind, namespace, name)
        if rebuild is not None:
            desired = rebuild(live)
            if owner is not None:
                kopf.adopt(desired, owner=dict(owner))  # type: ignore[arg-type]
        action = plan_child(kind, desired, live, policy)
        return await self.apply(action) if action is not None else dict(live or {})

    async def apply(self, action: Action) -> Obj:
        kind = action.kind
        self.counters.writes[kind.plural] += 1
        if isinstance(action, Create):
            meta = action.body["metadata"]
            namespace = str(meta.get("namespace", ""))
            try:
                body = await self.api.create(kind, namespace, action.body)
            except ApiError as exc:
                # A missing kind and a missing namespace are both 404; only the first is about us.
                if exc.not_found and "could not find the requested resource" in exc.message:
                    raise KindNotServed(kind) from exc
                raise
            self._written[(kind.plural, str(meta.get("namespace", "")), action.name)] = body
            return body
        if isinstance(action, Patch):
            body = await self.api.patch(kind, action.namespace, action.name, action.patch)
            self._written[(kind.plural, action.namespace, action.name)] = body
            return body
        assert isinstance(action, Delete)
        await self.api.delete(kind, action.namespace, action.name, uid=action.uid)
        self._written[(kind.plural, action.namespace, action.name)] = None
        return {}

    async def write_status(self, kind: Kind, namespace: str, name: str, patch: Obj | None) -> None:
        if patch is None:
            return
        self.counters.writes[f"{kind.plural}/status"] += 1
        await self.api.patch(kind, namespace, name, patch, subresource="status")


def snapshot(body: Mapping[str, Any]) -> Obj:
    """A plain, trimmed copy of a watched object for the cache (managedFields are dead weight)."""
    out = dict(body)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def names_of(objs: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted(str(o["metadata"]["name"]) for o in objs)
