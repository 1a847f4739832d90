"""Playing KubeRay without pods: tests that only need RayCluster status set it through this driver.

The status is the one KubeRay v1.6.2 computes (`podrunner.kuberay_status.calculate_status`, ported
from ray-operator/controllers/ray/raycluster_controller.go), fed with the pods KubeRay would see:
a ready head and `ready_groups * numOfHosts` ready workers (the rest Running, not ready). So the
conditions carry KubeRay's real types and reasons (ray-operator/apis/ray/v1/raycluster_types.go):
`HeadPodReady`, `RayClusterProvisioned` (set once, never cleared), `ReplicaFailure` (reason from
the errRayClusterReplicaFailure markers of ray-operator/controllers/ray/utils/constant.go, e.g.
FailedCreateWorkerPod), and `state: ready`, which KubeRay never clears once set. `auto()` runs a
background loop that brings every RayCluster up, like pods starting.

Tests that need the pods themselves to run use `tests.kube.podrunner.runner.PodRunner` instead.
"""

from __future__ import annotations

import threading
from typing import Any

from tests.kube.cluster import EmulatedCluster
from tests.kube.metadata import now_rfc3339
from tests.kube.podrunner import kuberay_api as K
from tests.kube.podrunner.kuberay_status import ReconcileError, calculate_status, essence
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


def _pod(name: str, node_type: str, cluster: str, ready: bool) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {K.RAY_CLUSTER_LABEL: cluster, K.RAY_NODE_TYPE_LABEL: node_type},
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def kuberay_status(
    rc: dict[str, Any],
    ready_groups: int | None = None,
    failure: str | None = None,
    head_ready: bool = True,
) -> dict[str, Any]:
    """The status KubeRay writes with `ready_groups` whole EP groups up (default: all of them).

    `failure` is a worker pod creation KubeRay's API call failed with (a quota, an admission
    webhook): ReplicaFailure=True, reason FailedCreateWorkerPod, as KubeRay reports it."""
    name = rc["metadata"]["name"]
    groups = (rc.get("spec") or {}).get("workerGroupSpecs") or []
    pods = [_pod(f"{name}-head", K.HEAD_NODE, name, head_ready)]
    for g_index, group in enumerate(groups):
        replicas = int(group.get("replicas") or 0)
        hosts = int(group.get("numOfHosts") or 1)
        up = replicas if ready_groups is None else min(ready_groups, replicas)
        for i in range(replicas * hosts):
            pods.append(_pod(f"{name}-w{g_index}-{i}", K.WORKER_NODE, name, i < up * hosts))
    error = None
    if failure:
        reason = K.FAILED_CREATE_WORKER_POD
        error = ReconcileError(f"{reason}\n{failure}", reason)
    status = calculate_status(rc, pods, [], error, now_rfc3339())
    status["head"] = {}
    return status


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
        if essence(rc.get("status") or {}) == essence(status):
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
        head_ready: bool = True,
    ) -> None:
        def run(store: ObjectStore) -> None:
            d = store.registry.resolve("ray.io", "v1", "rayclusters")
            rc = store.get(d, namespace, name)
            self._write(store, rc, kuberay_status(rc, ready_groups, failure, head_ready))

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
