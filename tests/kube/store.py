"""The object store behind the emulated API server. Pure and synchronous: no HTTP, no asyncio.

It keeps what a real API server's registry keeps per object (uid, resourceVersion, generation,
creationTimestamp, deletionTimestamp, finalizers) and implements the write semantics that
controllers depend on: optimistic concurrency, status/scale subresources, no-op writes that change
nothing, finalizers, garbage collection by owner reference, CRD registration, and a bounded
per-resource event history for watches (410 Gone when a watch asks for compacted history).
"""

from __future__ import annotations

import copy
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.kube import metadata as meta_rules
from tests.kube.admission import admit
from tests.kube.errors import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    gone,
    invalid,
    method_not_allowed,
    not_found,
    unsupported_media,
)
from tests.kube.gc import GarbageCollector
from tests.kube.patching import APPLY_PATCH, STRATEGIC_PATCH, apply_patch
from tests.kube.registry import Registry, crd_status
from tests.kube.resources import BUILTINS, CRD_RESOURCE, ResourceDef, scale_view
from tests.kube.selectors import set_path

Obj = dict[str, Any]
Key = tuple[tuple[str, str], str, str]  # (storage key, namespace or "", name)
_SERVER_META = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
)


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED
    object: Obj
    resource_version: int
    storage_key: tuple[str, str]


class ObjectStore:
    def __init__(self, history_per_resource: int = 5000) -> None:
        self.registry = Registry()
        self._rv = 0
        self._objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self._history: dict[tuple[str, str], deque[WatchEvent]] = {}
        self._compacted: dict[tuple[str, str], int] = {}
        self._history_len = history_per_resource
        self._listeners: list[Callable[[WatchEvent], None]] = []
        self.gc = GarbageCollector(self)
        for ns in ("default", "kube-system", "kube-public"):
            self.create(self.registry.resolve("", "v1", "namespaces"), None, {"metadata": {"name": ns}})

    # ---- reading ---------------------------------------------------------------------------------
    @property
    def resource_version(self) -> int:
        return self._rv

    def subscribe(self, listener: Callable[[WatchEvent], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[WatchEvent], None]) -> None:
        self._listeners.remove(listener)

    def bucket(self, storage_key: tuple[str, str]) -> dict[tuple[str, str], Obj]:
        return self._objects.setdefault(storage_key, {})

    def raw(self, key: Key) -> Obj | None:
        storage_key, ns, name = key
        return self._objects.get(storage_key, {}).get((ns, name))

    def all_objects(self) -> Iterable[tuple[Key, Obj]]:
        for storage_key, bucket in self._objects.items():
            for (ns, name), obj in bucket.items():
                yield (storage_key, ns, name), obj

    def present(self, obj: Obj, d: ResourceDef) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"] = d.api_version
        out["kind"] = d.kind
        return out

    def get(self, d: ResourceDef, ns: str | None, name: str) -> Obj:
        obj = self.bucket(d.storage_key).get((ns or "", name))
        if obj is None:
            raise not_found(d.plural, name, d.group)
        return self.present(obj, d)

    def list(self, d: ResourceDef, ns: str | None, predicate: Callable[[Obj], bool]) -> tuple[list[Obj], int]:
        items = [
            self.present(obj, d)
            for (obj_ns, _), obj in sorted(self.bucket(d.storage_key).items())
            if (ns is None or obj_ns == ns) and predicate(obj)
        ]
        return items, self._rv

    def events_since(self, storage_key: tuple[str, str], rv: int) -> list[WatchEvent]:
        if rv < self._compacted.get(storage_key, 0):
            raise gone(f"too old resource version: {rv} ({self._compacted[storage_key]})")
        return [e for e in self._history.get(storage_key, ()) if e.resource_version > rv]

    # ---- writing ---------------------------------------------------------------------------------
    def _emit(self, kind: str, d_key: tuple[str, str], obj: Obj) -> None:
        event = WatchEvent(kind, copy.deepcopy(obj), int(obj["metadata"]["resourceVersion"]), d_key)
        history = self._history.setdefault(d_key, deque())
        history.append(event)
        if len(history) > self._history_len:
            self._compacted[d_key] = history.popleft().resource_version
        for listener in list(self._listeners):
            listener(event)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _check_namespace(self, d: ResourceDef, ns: str | None, body: Obj) -> str:
        body_ns = (body.get("metadata") or {}).get("namespace")
        if not d.namespaced:
            return ""
        if ns and body_ns and body_ns != ns:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        ns = ns or body_ns
        if not ns:
            raise bad_request("an empty namespace may not be set during creation")
        namespace = self.bucket(("", "namespaces")).get(("", ns))
        if namespace is None:
            raise not_found("namespaces", ns)
        if namespace["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f'{d.describe()} "{(body.get("metadata") or {}).get("name", "")}" '
                f"is forbidden: unable to create new content in namespace {ns} "
                f"because it is being terminated",
            )
        return str(ns)

    def create(
        self,
        d: ResourceDef,
        ns: str | None,
        body: Mapping[str, Any],
        *,
        strict: bool = False,
        dry_run: bool = False,
    ) -> Obj:
        obj: Obj = copy.deepcopy(dict(body))
        if obj.get("kind") not in (None, d.kind):
            raise bad_request(
                f"the kind {obj.get('kind')!r} of the body does not match the resource {d.kind!r}"
            )
        obj["apiVersion"], obj["kind"] = d.api_version, d.kind
        meta = obj.setdefault("metadata", {})
        ns = self._check_namespace(d, ns, obj)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(
                    d.kind, "", ["metadata.name: Required value: name or generateName is required"], d.group
                )
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta["name"]
        if (ns, name) in self.bucket(d.storage_key):
            raise already_exists(d.plural, name, d.group)
        for field in _SERVER_META:
            meta.pop(field, None)
        if ns:
            meta["namespace"] = ns
        if d.status_subresource:
            obj.pop("status", None)
        if d.storage_key == ("", "namespaces"):
            obj["status"] = {"phase": "Active"}
        obj = admit(self.registry, d, obj, None, strict)
        if d.storage_key == CRD_RESOURCE.storage_key:
            obj["status"] = crd_status(obj)
        if dry_run:
            return self.present(obj, d)
        meta = obj["metadata"]
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            generation=1,
            creationTimestamp=meta_rules.now_rfc3339(),
        )
        self.bucket(d.storage_key)[(ns, name)] = obj
        if d.storage_key == CRD_RESOURCE.storage_key:
            self.registry.register_crd(obj)
        self._emit("ADDED", d.storage_key, obj)
        self.gc.on_write((d.storage_key, ns, name))
        return self.present(obj, d)

    def _stored(self, d: ResourceDef, ns: str | None, name: str) -> Obj:
        obj = self.bucket(d.storage_key).get((ns or "", name))
        if obj is None:
            raise not_found(d.plural, name, d.group)
        return obj

    def replace(
        self,
        d: ResourceDef,
        ns: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str | None = None,
        strict: bool = False,
        dry_run: bool = False,
    ) -> Obj:
        old = self._stored(d, ns, name)
        new = copy.deepcopy(dict(body))
        new_meta = new.setdefault("metadata", {})
        if new_meta.get("name", name) != name:
            raise bad_request(
                f"the name of the object ({new_meta.get('name')}) does not match the name on the URL ({name})"
            )
        rv = new_meta.get("resourceVersion")
        if rv and str(rv) != old["metadata"]["resourceVersion"]:
            raise conflict(d.plural, name, d.group)
        return self._update(d, old, new, subresource, strict, dry_run)

    def patch(
        self,
        d: ResourceDef,
        ns: str | None,
        name: str,
        content_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        strict: bool = False,
        dry_run: bool = False,
    ) -> Obj:
        old = self.bucket(d.storage_key).get((ns or "", name))
        if old is None:
            if content_type.startswith(APPLY_PATCH) and subresource is None:
                body = dict(patch)
                body.setdefault("metadata", {})["name"] = name
                return self.create(d, ns, body, strict=strict, dry_run=dry_run)
            raise not_found(d.plural, name, d.group)
        if content_type.startswith(STRATEGIC_PATCH) and d not in BUILTINS:
            raise unsupported_media(content_type)  # custom resources have no patch strategies
        if subresource == "scale":
            patched_scale = apply_patch(content_type, self.scale(d, ns, name), patch)
            return self.replace_scale(d, ns, name, patched_scale, dry_run=dry_run)
        patched = apply_patch(content_type, copy.deepcopy(old), patch)
        rv = (patched.get("metadata") or {}).get("resourceVersion")
        if rv and str(rv) != old["metadata"]["resourceVersion"]:
            raise conflict(d.plural, name, d.group)
        return self._update(d, old, patched, subresource, strict, dry_run)

    def _update(
        self, d: ResourceDef, old: Obj, new: Obj, subresource: str | None, strict: bool, dry_run: bool
    ) -> Obj:
        old_meta = old["metadata"]
        if subresource == "status":
            merged = copy.deepcopy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        elif subresource is not None:
            raise method_not_allowed(
                f"the server does not allow this method on the subresource {subresource}"
            )
        else:
            if d.status_subresource:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
            meta = new.setdefault("metadata", {})
            for field in _SERVER_META:
                meta.pop(field, None)
                if field in old_meta:
                    meta[field] = old_meta[field]
            meta["name"], meta["namespace"] = old_meta["name"], old_meta.get("namespace")
            if meta["namespace"] is None:
                del meta["namespace"]
            added = set(meta.get("finalizers") or ()) - set(old_meta.get("finalizers") or ())
            if old_meta.get("deletionTimestamp") and added:
                raise invalid(
                    d.kind,
                    old_meta["name"],
                    [
                        "metadata.finalizers: Forbidden: no new finalizers can be added if the object is "
                        f"being deleted, found new finalizers {sorted(added)!r}"
                    ],
                    d.group,
                )
        new["apiVersion"], new["kind"] = old.get("apiVersion", d.api_version), d.kind
        new = admit(self.registry, d, new, old, strict)
        if _spec_changed(d, old, new):
            new["metadata"]["generation"] = int(old_meta.get("generation", 1)) + 1
        if _same(old, new):
            return self.present(old, d)  # a no-op write changes nothing, not even resourceVersion
        if dry_run:
            return self.present(new, d)
        new["metadata"]["resourceVersion"] = self._next_rv()
        key = (d.storage_key, old_meta.get("namespace", ""), old_meta["name"])
        self.bucket(d.storage_key)[key[1:]] = new
        if d.storage_key == CRD_RESOURCE.storage_key:
            self.registry.register_crd(new)
        self._emit("MODIFIED", d.storage_key, new)
        result = self.present(new, d)
        self.gc.on_write(key)
        return result

    # ---- scale subresource ---------------------------------------------------------------------
    def scale(self, d: ResourceDef, ns: str | None, name: str) -> Obj:
        if d.scale is None:
            raise not_found(f"{d.plural}/scale", name, d.group)
        return scale_view(self._stored(d, ns, name), d.scale)

    def replace_scale(
        self, d: ResourceDef, ns: str | None, name: str, scale: Mapping[str, Any], *, dry_run: bool = False
    ) -> Obj:
        if d.scale is None:
            raise not_found(f"{d.plural}/scale", name, d.group)
        old = self._stored(d, ns, name)
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        if rv and str(rv) != old["metadata"]["resourceVersion"]:
            raise conflict(d.plural, name, d.group)
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise invalid(
                "Scale",
                name,
                [f"spec.replicas: Invalid value: {replicas!r}: must be greater than or equal to 0"],
                "autoscaling",
            )
        new = copy.deepcopy(old)
        set_path(new, d.scale.spec_replicas, replicas)
        self._update(d, old, new, None, False, dry_run)
        return self.scale(d, ns, name) if not dry_run else dict(scale)

    # ---- deletion --------------------------------------------------------------------------------
    def delete(
        self,
        d: ResourceDef,
        ns: str | None,
        name: str,
        *,
        propagation: str = "Background",
        preconditions: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> Obj:
        obj = self._stored(d, ns, name)
        meta = obj["metadata"]
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise conflict(
                d.plural,
                name,
                d.group,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {meta['uid']}",
            )
        if pre.get("resourceVersion") and str(pre["resourceVersion"]) != meta["resourceVersion"]:
            raise conflict(d.plural, name, d.group)
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise bad_request(f"unsupported propagationPolicy {propagation!r}")
        if dry_run:
            return self.present(obj, d)
        return self.present(self.gc.delete((d.storage_key, meta.get("namespace", ""), name), propagation), d)

    def remove(self, key: Key) -> Obj:
        """Delete for good (finalizers are empty): emit DELETED and let the collector follow up."""
        storage_key, ns, name = key
        obj = self.bucket(storage_key).pop((ns, name))
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        if storage_key == CRD_RESOURCE.storage_key:
            self.registry.unregister_crd(name)
        self._emit("DELETED", storage_key, obj)
        return obj

    def mark_deleting(self, key: Key, extra_finalizer: str | None = None) -> Obj:
        storage_key, ns, name = key
        obj = copy.deepcopy(self.bucket(storage_key)[(ns, name)])
        meta = obj["metadata"]
        if extra_finalizer and extra_finalizer not in (meta.get("finalizers") or []):
            meta["finalizers"] = [*(meta.get("finalizers") or []), extra_finalizer]
        meta["deletionTimestamp"] = meta_rules.now_rfc3339()
        meta["deletionGracePeriodSeconds"] = 0
        meta["resourceVersion"] = self._next_rv()
        if storage_key == ("", "namespaces"):
            obj.setdefault("status", {})["phase"] = "Terminating"
        self.bucket(storage_key)[(ns, name)] = obj
        self._emit("MODIFIED", storage_key, obj)
        return obj

    def write_meta(self, key: Key, **changes: Any) -> Obj:
        """A server-side metadata change (the collector dropping a finalizer or an owner reference)."""
        storage_key, ns, name = key
        obj = copy.deepcopy(self.bucket(storage_key)[(ns, name)])
        obj["metadata"].update(changes)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self.bucket(storage_key)[(ns, name)] = obj
        self._emit("MODIFIED", storage_key, obj)
        return obj


def _strip(obj: Mapping[str, Any], drop_status: bool) -> dict[str, Any]:
    return {
        k: v
        for k, v in obj.items()
        if k not in ("metadata", "apiVersion", "kind") and not (drop_status and k == "status")
    }


def _spec_changed(d: ResourceDef, old: Obj, new: Obj) -> bool:
    return _strip(old, d.status_subresource) != _strip(new, d.status_subresource)


def _same(old: Obj, new: Obj) -> bool:
    def norm(o: Obj) -> Obj:
        out = {k: v for k, v in o.items() if k not in ("apiVersion", "kind")}
        out["metadata"] = {k: v for k, v in (o.get("metadata") or {}).items() if k != "resourceVersion"}
        return out

    return norm(old) == norm(new)
