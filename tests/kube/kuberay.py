"""Playing KubeRay: no KubeRay controller runs here, so tests set RayCluster status themselves.

The driver writes status the way KubeRay v1.x does (`readyWorkerReplicas` counts worker pods,
`HeadPodReady` and `RayClusterProvisioned` conditions, `state: ready`), straight into the store,
as a controller's status update would land. `auto()` runs a background loop that brings every
RayCluster up after a delay, like pods starting.
"""

from __future__ import annotations

import threading
from typing import Any

from tests.kube.cluster import EmulatedCluster
from tests.kube.metadata import now_rfc3339
from tests.kube.resources import ResourceDef, crd_manifest
from tests.kube.store import ObjectStore

RAYCLUSTER = ResourceDef(
    group="ray.io",
    version="v1",
    plural="rayclusters",
    kind="RayCluster",
    namespaced=True,
    singular="raycluster",
    categories=("all",),
    status_subresource=True,
)


def _group(rc: dict[str, Any]) -> dict[str, Any]:
    groups = (rc.get("spec") or {}).get("workerGroupSpecs") or [{}]
    return groups[0]


def kuberay_status(
    rc: dict[str, Any], ready_groups: int | None = None, failure: str | None = None
) -> dict[str, Any]:
    """The status KubeRay reports with `ready_groups` whole EP groups up (default: all)."""
    group = _group(rc)
    replicas = int(group.get("replicas") or 0)
    hosts = int(group.get("numOfHosts") or 1)
    groups = replicas if ready_groups is None else min(ready_groups, replicas)
    now = now_rfc3339()
    conditions = [
        {
            "type": "HeadPodReady",
            "status": "True",
            "reason": "HeadPodRunningAndReady",
            "lastTransitionTime": now,
        },
        {
            "type": "RayClusterProvisioned",
            "status": "True" if groups == replicas else "False",
            "reason": "AllPodRunningAndReadyFirstTime"
            if groups == replicas
            else "RayClusterPodsProvisioning",
            "lastTransitionTime": now,
        },
    ]
    if failure:
        conditions.append(
            {
                "type": "RayClusterReplicaFailure",
                "status": "True",
                "reason": "FailedCreateWorkerPod",
                "message": failure,
                "lastTransitionTime": now,
            }
        )
    return {
        "state": "ready" if groups == replicas and not failure else "",
        "desiredWorkerReplicas": replicas * hosts,
        "readyWorkerReplicas": groups * hosts,
        "availableWorkerReplicas": groups * hosts,
        "observedGeneration": int(rc["metadata"].get("generation", 1)),
        "conditions": conditions,
    }


class KubeRayDriver:
    def __init__(self, cluster: EmulatedCluster) -> None:
        self.cluster = cluster
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def install_crd(self) -> None:
        """What installing the KubeRay operator's chart does for this emulator: serve RayClusters."""
        body = crd_manifest([RAYCLUSTER])
        self.cluster.call(
            lambda s: (
                s.create(
                    s.registry.resolve("apiextensions.k8s.io", "v1", "customresourcedefinitions"), None, body
                )
                if s.registry.find("ray.io", "v1", "rayclusters") is None
                else None
            )
        )

    def rayclusters(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.cluster.list("ray.io/v1", "RayCluster", namespace)

    def _write(self, store: ObjectStore, rc: dict[str, Any], status: dict[str, Any]) -> bool:
        if _essence(rc.get("status") or {}) == _essence(status):
            return False  # KubeRay does not rewrite an unchanged status
        d = store.registry.resolve("ray.io", "v1", "rayclusters")
        meta = rc["metadata"]
        store.patch(
            d,
            meta["namespace"],
            meta["name"],
            "application/merge-patch+json",
            {"status": status},
            subresource="status",
        )
        return True

    def set_ready(
        self,
        name: str,
        namespace: str = "default",
        ready_groups: int | None = None,
        failure: str | None = None,
    ) -> None:
        def run(store: ObjectStore) -> None:
            d = store.registry.resolve("ray.io", "v1", "rayclusters")
            rc = store.get(d, namespace, name)
            self._write(store, rc, kuberay_status(rc, ready_groups, failure))

        self.cluster.call(run)

    def mark_all_ready(self, namespace: str | None = None) -> int:
        """Every RayCluster reports all its groups ready; returns how many changed."""

        def run(store: ObjectStore) -> int:
            d = store.registry.find("ray.io", "v1", "rayclusters")
            if d is None:
                return 0
            # The stored objects, not copies: this runs every few tenths of a second.
            items = [
                rc
                for (ns, _), rc in list(store.bucket(d.storage_key).items())
                if (namespace is None or ns == namespace) and not rc["metadata"].get("deletionTimestamp")
            ]
            return sum(self._write(store, rc, kuberay_status(rc)) for rc in items)

        return self.cluster.call(run)

    def auto(self, interval_s: float = 0.1) -> KubeRayDriver:
        """Bring every RayCluster up continuously (a KubeRay whose pods start at once)."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.mark_all_ready()
                except Exception:  # the cluster may be stopping; the next round retries
                    if self._stop.is_set():
                        return

        self._thread = threading.Thread(target=loop, name="kuberay-driver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _essence(status: dict[str, Any]) -> dict[str, Any]:
    """A status without its conditions' transition times."""
    out = {k: v for k, v in status.items() if k != "conditions"}
    out["conditions"] = [
        (c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
        for c in status.get("conditions") or []
    ]
    return out
