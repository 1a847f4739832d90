"""Garbage collection and deletion semantics: finalizers, owner references, propagation policies,
and namespace termination. Synchronous: the cascade completes within the request that caused it,
which is a faster (not a different) version of what the real collector converges to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.kube.store import Key, ObjectStore

_FOREGROUND = "foregroundDeletion"
_NAMESPACES = ("", "namespaces")
_CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")


class GarbageCollector:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._uids: dict[str, Key] = {}
        self._dependents: dict[str, set[Key]] = {}

    # ---- indexes ---------------------------------------------------------------------------------
    def _index(self, key: Key, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self._uids[meta["uid"]] = key
        for owners in self._dependents.values():
            owners.discard(key)
        for ref in meta.get("ownerReferences") or ():
            self._dependents.setdefault(ref["uid"], set()).add(key)

    def _unindex(self, key: Key, obj: dict[str, Any]) -> None:
        self._uids.pop(obj["metadata"]["uid"], None)
        for ref in obj["metadata"].get("ownerReferences") or ():
            self._dependents.get(ref["uid"], set()).discard(key)

    def exists(self, uid: str) -> bool:
        return uid in self._uids

    def dependents_of(self, uid: str) -> list[Key]:
        return sorted(self._dependents.get(uid, set()))

    # ---- hooks ------------------------------------------------------------------------------------
    def on_write(self, key: Key) -> None:
        """After a create or update: finish a released deletion, or collect an orphan."""
        obj = self._store.raw(key)
        if obj is None:
            return
        self._index(key, obj)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            self._settle(key)
            return
        refs = meta.get("ownerReferences") or []
        if refs and not any(self.exists(ref["uid"]) for ref in refs):
            self.delete(key, "Background")

    def delete(self, key: Key, propagation: str) -> dict[str, Any]:
        store = self._store
        obj = store.raw(key)
        assert obj is not None
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return obj
        if key[0] == _NAMESPACES:
            obj = store.mark_deleting(key)
            for (storage_key, ns, name), _ in list(store.all_objects()):
                if ns == key[2] and store.raw((storage_key, ns, name)) is not None:
                    self.delete((storage_key, ns, name), "Background")
            self._settle(key)
            return store.raw(key) or obj
        if propagation == "Orphan":
            for dependent in self.dependents_of(meta["uid"]):
                dep = store.raw(dependent)
                if dep is not None:
                    refs = [
                        r for r in dep["metadata"].get("ownerReferences") or () if r["uid"] != meta["uid"]
                    ]
                    store.write_meta(dependent, ownerReferences=refs)
                    self._index(dependent, store.raw(dependent) or dep)
        if propagation == "Foreground":
            obj = store.mark_deleting(key, _FOREGROUND)
            for dependent in self.dependents_of(meta["uid"]):
                if store.raw(dependent) is not None:
                    self.delete(dependent, "Foreground")
            self._settle(key)
            return store.raw(key) or obj
        if meta.get("finalizers"):
            return store.mark_deleting(key)
        return self._remove(key)

    # ---- internals --------------------------------------------------------------------------------
    def _remove(self, key: Key) -> dict[str, Any]:
        store = self._store
        obj = store.raw(key)
        assert obj is not None
        uid = obj["metadata"]["uid"]
        if key[0] == _CRDS:
            # The CRD's instances go first (the real server's customresourcecleanup finalizer).
            for d in store.registry.crd_resources(key[2]):
                for ns, name in list(store.bucket(d.storage_key)):
                    if store.raw((d.storage_key, ns, name)) is not None:
                        self._remove((d.storage_key, ns, name))
        self._unindex(key, obj)
        removed = store.remove(key)
        for dependent in self.dependents_of(uid):
            dep = store.raw(dependent)
            if dep is None:
                continue
            refs = dep["metadata"].get("ownerReferences") or []
            if not any(self.exists(ref["uid"]) for ref in refs):
                self.delete(dependent, "Background")
        self._dependents.pop(uid, None)
        for ref in obj["metadata"].get("ownerReferences") or ():
            owner = self._uids.get(ref["uid"])
            if owner is not None:
                self._settle(owner)
        if key[0] != _NAMESPACES and key[1]:
            namespace = (_NAMESPACES, "", key[1])
            if store.raw(namespace) is not None:
                self._settle(namespace)
        return removed

    def _settle(self, key: Key) -> None:
        """A deleting object goes for good once its finalizers are released."""
        store = self._store
        obj = store.raw(key)
        if obj is None or not obj["metadata"].get("deletionTimestamp"):
            return
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if _FOREGROUND in finalizers and not any(store.raw(d) for d in self.dependents_of(meta["uid"])):
            finalizers.remove(_FOREGROUND)
            store.write_meta(key, finalizers=finalizers)
        if key[0] == _NAMESPACES and any(
            ns == key[2] for (sk, ns, _), _ in store.all_objects() if sk != _NAMESPACES
        ):
            return
        if not finalizers:
            self._remove(key)
