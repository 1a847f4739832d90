"""The pod runner's access to the emulated API server: one consistent snapshot of what it plays for,
and writes straight into the store, as the controllers' API calls would land (they are not the
component under test, so they are not recorded as any user's API calls).

Also what the API server and its built-in controllers keep in a real cluster: the `kubernetes`
Service, each namespace's `default` ServiceAccount and kube-root-ca.crt ConfigMap, and the
ServiceAccount admission plugin's token volume on every pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tests.kube.cluster import EmulatedCluster
from tests.kube.errors import ApiError
from tests.kube.metadata import now_rfc3339
from tests.kube.store import ObjectStore

Obj = dict[str, Any]
T = TypeVar("T")
FINALIZER = "podrunner.moeplane.test/kubelet"  # graceful deletion: held until the containers are down
NODE = "podrunner-node"
API_HOST = "127.0.0.1"  # the emulated API server; its certificate names this address
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
ROOT_CA = "kube-root-ca.crt"
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery utilrand.String's alphabet


def random_suffix(n: int = 5) -> str:
    return "".join(secrets.choice(_GENERATE_CHARS) for _ in range(n))


def key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (str(obj["metadata"].get("namespace", "")), str(obj["metadata"]["name"]))


@dataclass
class Snapshot:
    pods: list[Obj] = field(default_factory=list)
    rayclusters: list[Obj] = field(default_factory=list)
    deployments: list[Obj] = field(default_factory=list)
    jobs: list[Obj] = field(default_factory=list)
    services: list[Obj] = field(default_factory=list)
    configmaps: dict[tuple[str, str], Obj] = field(default_factory=dict)
    secrets: dict[tuple[str, str], Obj] = field(default_factory=dict)
    pvcs: dict[tuple[str, str], Obj] = field(default_factory=dict)


_KINDS = {
    "pods": ("", "v1", "pods"),
    "rayclusters": ("ray.io", "v1", "rayclusters"),
    "deployments": ("apps", "v1", "deployments"),
    "jobs": ("batch", "v1", "jobs"),
    "services": ("", "v1", "services"),
    "configmaps": ("", "v1", "configmaps"),
    "secrets": ("", "v1", "secrets"),
    "pvcs": ("", "v1", "persistentvolumeclaims"),
}


class ClusterIO:
    def __init__(self, cluster: EmulatedCluster, namespaces: Iterable[str] | None = None) -> None:
        self.cluster = cluster
        self.namespaces = set(namespaces) if namespaces is not None else None
        self.tokens: dict[str, str] = {}  # pod uid -> its service account token

    async def call(self, fn: Callable[[ObjectStore], T]) -> T:
        """Run `fn(store)` on the API server's loop (from the runner's loop)."""
        loop = self.cluster._loop
        assert loop is not None

        async def run() -> T:
            return fn(self.cluster.emulator.store)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))

    def _take(self, store: ObjectStore) -> Snapshot:
        snap = Snapshot()
        for attr, (group, version, plural) in _KINDS.items():
            d = store.registry.find(group, version, plural)
            if d is None:
                continue
            items = [
                o
                for o in store.list(d, None, lambda o: True)[0]
                if self.namespaces is None or o["metadata"].get("namespace") in self.namespaces
            ]
            current = getattr(snap, attr)
            if isinstance(current, dict):
                current.update({key(o): o for o in items})
            else:
                current.extend(items)
        return snap

    async def snapshot(self) -> Snapshot:
        return await self.call(self._take)

    # ---- writes ---------------------------------------------------------------------------------------
    async def create(self, group: str, version: str, plural: str, body: Obj) -> Obj:
        def run(store: ObjectStore) -> Obj:
            d = store.registry.resolve(group, version, plural)
            return store.create(d, body["metadata"].get("namespace"), body)

        return await self.call(run)

    async def delete_pod(self, ns: str, name: str) -> None:
        def run(store: ObjectStore) -> None:
            d = store.registry.resolve("", "v1", "pods")
            with contextlib.suppress(ApiError):
                if store.bucket(d.storage_key).get((ns, name)) is not None:
                    store.delete(d, ns, name)

        await self.call(run)

    async def write_status(self, group: str, version: str, plural: str, obj: Obj, status: Obj) -> None:
        """Replace `obj`'s status, if the object is still the same one (same uid)."""
        ns, name = key(obj)

        def run(store: ObjectStore) -> None:
            d = store.registry.resolve(group, version, plural)
            live = store.bucket(d.storage_key).get((ns or "", name))
            if live is None or live["metadata"]["uid"] != obj["metadata"]["uid"]:
                return
            body = copy.deepcopy(live)
            body["status"] = status
            store.replace(d, ns or None, name, body, subresource="status")

        await self.call(run)

    async def event(self, obj: Obj, kind: str, reason: str, message: str, component: str = "kubelet") -> None:
        meta = obj["metadata"]
        now = now_rfc3339()
        body: Obj = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace", "default")},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", "v1"),
                "kind": obj.get("kind", "Pod"),
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": component},
            "reportingComponent": component,
        }

        def run(store: ObjectStore) -> None:
            with contextlib.suppress(ApiError):
                store.create(store.registry.resolve("", "v1", "events"), body["metadata"]["namespace"], body)

        await self.call(run)

    # ---- what a real cluster keeps -------------------------------------------------------------------
    def kubernetes_service(self, store: ObjectStore) -> None:
        """default/kubernetes, as the API server keeps it; here it fronts the emulated API server
        (its port is the server's own: pods reach it on the node's loopback)."""
        if store.bucket(("", "services")).get(("default", "kubernetes")) is None:
            port = self.cluster.port
            store.create(
                store.registry.resolve("", "v1", "services"),
                "default",
                {
                    "metadata": {
                        "name": "kubernetes",
                        "labels": {"component": "apiserver", "provider": "kubernetes"},
                    },
                    "spec": {
                        "type": "ClusterIP",
                        "ports": [{"name": "https", "port": port, "targetPort": port, "protocol": "TCP"}],
                    },
                },
            )

    def _namespace_defaults(self, store: ObjectStore, ns: str) -> None:
        """The `default` ServiceAccount and kube-root-ca.crt (the ServiceAccount and root-CA
        publisher controllers)."""
        with contextlib.suppress(ApiError):
            if store.bucket(("", "serviceaccounts")).get((ns, "default")) is None:
                store.create(
                    store.registry.resolve("", "v1", "serviceaccounts"), ns, {"metadata": {"name": "default"}}
                )
        with contextlib.suppress(ApiError):
            if store.bucket(("", "configmaps")).get((ns, ROOT_CA)) is None:
                store.create(
                    store.registry.resolve("", "v1", "configmaps"),
                    ns,
                    {
                        "metadata": {"name": ROOT_CA},
                        "data": {"ca.crt": self.cluster.certificate.ca_pem.decode()},
                    },
                )

    async def bind(self, pod: Obj) -> str | None:
        """Bind `pod` to the node with what the ServiceAccount admission plugin adds on create: the
        account's name and, unless automount is off, its token, CA and namespace at
        /var/run/secrets/kubernetes.io/serviceaccount (a `kube-api-access-*` projected volume).
        Returns why it cannot be bound (its ServiceAccount does not exist), or None."""
        ns, name = key(pod)
        account = str(pod["spec"].get("serviceAccountName") or "default")
        token = secrets.token_hex(16)

        def run(store: ObjectStore) -> str | None:
            d = store.registry.resolve("", "v1", "pods")
            live = store.bucket(d.storage_key).get((ns, name))
            if live is None or live["metadata"].get("deletionTimestamp"):
                return None
            self._namespace_defaults(store, ns)
            sa = store.bucket(("", "serviceaccounts")).get((ns, account))
            if sa is None:
                return f'serviceaccount "{account}" not found'
            spec: Obj = {"nodeName": NODE, "serviceAccountName": account, "serviceAccount": account}
            automount = live["spec"].get(
                "automountServiceAccountToken", sa.get("automountServiceAccountToken", True)
            )
            if automount:
                spec.update(token_volume(live["spec"]))
                self.tokens[live["metadata"]["uid"]] = token
                self.cluster.emulator.tokens[token] = f"system:serviceaccount:{ns}:{account}"
            finalizers = [*(live["metadata"].get("finalizers") or []), FINALIZER]
            store.patch(
                d,
                ns,
                name,
                "application/merge-patch+json",
                {"metadata": {"finalizers": finalizers}, "spec": spec},
            )
            return None

        return await self.call(run)

    async def release(self, pod: Obj) -> None:
        """Drop the runner's finalizer: the pod's containers are down, the deletion completes."""
        ns, name = key(pod)
        uid = pod["metadata"]["uid"]

        def run(store: ObjectStore) -> None:
            d = store.registry.resolve("", "v1", "pods")
            live = store.bucket(d.storage_key).get((ns, name))
            if live is None or live["metadata"]["uid"] != uid:
                return
            finalizers = [f for f in live["metadata"].get("finalizers") or () if f != FINALIZER]
            store.patch(d, ns, name, "application/merge-patch+json", {"metadata": {"finalizers": finalizers}})

        await self.call(run)

    async def unschedulable(self, pod: Obj, reason: str) -> None:
        """PodScheduled=False with the scheduler's message (once per message) and its event."""
        status = pod.get("status") or {}
        if any(
            c.get("type") == "PodScheduled" and c.get("message") == reason
            for c in status.get("conditions") or ()
        ):
            return
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": reason,
            "lastProbeTime": None,
            "lastTransitionTime": now_rfc3339(),
        }
        await self.write_status("", "v1", "pods", pod, {"phase": "Pending", "conditions": [condition]})
        await self.event(pod, "Warning", "FailedScheduling", reason, component="default-scheduler")


def token_volume(spec: Obj) -> Obj:
    """The spec fields admission adds for the service account token (the volume and its mounts)."""
    volume_name = f"kube-api-access-{random_suffix()}"
    namespace_item = {
        "path": "namespace",
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
    }
    volume = {
        "name": volume_name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": ROOT_CA, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [namespace_item]}},
            ],
        },
    }
    out: Obj = {"volumes": [*(spec.get("volumes") or []), volume]}
    for kind in ("initContainers", "containers"):
        containers = copy.deepcopy(spec.get(kind) or [])
        for c in containers:
            mounts = c.setdefault("volumeMounts", [])
            if not any(m.get("mountPath") == SA_MOUNT for m in mounts):
                mounts.append({"name": volume_name, "mountPath": SA_MOUNT, "readOnly": True})
        if containers:
            out[kind] = containers
    return out
