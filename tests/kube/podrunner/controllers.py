"""One pass of each controller the runner plays, against a snapshot: KubeRay's RayCluster reconcile
(Services, then pods, then status, as `rayClusterReconcile` orders them), and the Deployment and Job
controllers. Decisions are the pure modules' (`kuberay_reconcile`, `kuberay_status`, `workloads`);
this applies them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.kube.errors import ApiError
from tests.kube.metadata import now_rfc3339
from tests.kube.podrunner import kuberay_api as K
from tests.kube.podrunner.clusterio import ClusterIO, Snapshot, key, random_suffix
from tests.kube.podrunner.kuberay_pods import DEFAULT_CONFIG, KubeRayConfig
from tests.kube.podrunner.kuberay_reconcile import VictimOrder, oldest_first, reconcile_pods
from tests.kube.podrunner.kuberay_services import head_service, headless_worker_service
from tests.kube.podrunner.kuberay_status import ReconcileError, calculate_status, essence
from tests.kube.podrunner.workloads import reconcile_deployment, reconcile_job
from tests.kube.store import ObjectStore

Obj = dict[str, Any]
# An admission check on pods KubeRay creates: the refusal message (a quota, a webhook), or None.
Admission = Callable[[Obj], str | None]


@dataclass
class KubeRay:
    """The KubeRay operator as deployed: its switches, its (arbitrary) scale-down order, and
    admission checks that can refuse its pod creations."""

    config: KubeRayConfig = DEFAULT_CONFIG
    victim_order: VictimOrder = oldest_first
    admission: list[Admission] = field(default_factory=list)

    def _refusal(self, pod: Obj) -> str | None:
        return next((m for m in (check(pod) for check in self.admission) if m), None)

    async def reconcile(self, io: ClusterIO, snap: Snapshot, rc: Obj) -> None:
        name, ns = rc["metadata"]["name"], rc["metadata"]["namespace"]
        live = [p for p in _of_cluster(snap.pods, ns, name) if not p["metadata"].get("deletionTimestamp")]
        for svc in filter(None, (head_service(rc), headless_worker_service(rc))):
            if not any(key(s) == key(svc) for s in snap.services):
                await io.create("", "v1", "services", svc)
        step = reconcile_pods(
            rc, live, lambda group: f"{group}-{random_suffix()}", self.victim_order, self.config
        )
        error: ReconcileError | None = None
        for delete in step.deletes:
            try:
                await io.delete_pod(ns, delete.name)
                await io.event(
                    rc,
                    "Normal",
                    "DeletedWorkerPod",
                    f"Deleted worker Pod {ns}/{delete.name}: {delete.reason}",
                    component="raycluster-controller",
                )
            except ApiError as exc:
                error = ReconcileError(f"{delete.failure_reason}\n{exc.message}", delete.failure_reason)
        for create in step.creates:
            try:
                refusal = self._refusal(create.pod)
                if refusal:
                    generated = create.pod["metadata"]["generateName"]
                    raise ApiError(403, "Forbidden", f'pods "{generated}" is forbidden: {refusal}')
                await io.create("", "v1", "pods", create.pod)
            except ApiError as exc:
                error = ReconcileError(f"{create.failure_reason}\n{exc.message}", create.failure_reason)
                await io.event(
                    rc,
                    "Warning",
                    "FailedToCreateWorkerPod",
                    f"Failed to create worker Pod for the cluster {ns}/{name}, {exc.message}",
                    component="raycluster-controller",
                )
                break
        if error is None and step.error is not None:
            error = ReconcileError(step.error)
        # calculateStatus lists the cluster's pods and head Service again, after this pass's writes.
        live_rc, pods, head_svcs = await io.call(lambda store: _cluster_view(store, rc))
        if live_rc is None:
            return
        status = calculate_status(live_rc, pods, head_svcs, error, now_rfc3339())
        if essence(status) != essence(live_rc.get("status") or {}):
            await io.write_status("ray.io", "v1", "rayclusters", live_rc, status)


def _cluster_view(store: ObjectStore, rc: Obj) -> tuple[Obj | None, list[Obj], list[Obj]]:
    """The RayCluster as stored now, its pods (ray.io/cluster) and its head Service."""
    ns, name = key(rc)
    d = store.registry.find("ray.io", "v1", "rayclusters")
    live = None if d is None else store.bucket(d.storage_key).get((ns, name))
    if live is None or live["metadata"]["uid"] != rc["metadata"]["uid"]:
        return None, [], []
    assert d is not None

    def mine(obj: Obj) -> bool:
        return (obj["metadata"].get("labels") or {}).get(K.RAY_CLUSTER_LABEL) == name

    pods = store.list(store.registry.resolve("", "v1", "pods"), ns, mine)[0]
    services = store.list(
        store.registry.resolve("", "v1", "services"),
        ns,
        lambda o: mine(o) and (o["metadata"].get("labels") or {}).get(K.RAY_NODE_TYPE_LABEL) == K.HEAD_NODE,
    )[0]
    return store.present(live, d), pods, services


def _of_cluster(pods: list[Obj], ns: str, name: str) -> list[Obj]:
    return [
        p
        for p in pods
        if p["metadata"]["namespace"] == ns
        and (p["metadata"].get("labels") or {}).get(K.RAY_CLUSTER_LABEL) == name
    ]


async def deployment(io: ClusterIO, snap: Snapshot, deploy: Obj) -> None:
    actions = reconcile_deployment(deploy, snap.pods)
    for name in actions.delete:
        await io.delete_pod(deploy["metadata"]["namespace"], name)
    for pod in actions.create:
        with contextlib.suppress(ApiError):
            await io.create("", "v1", "pods", pod)
    if actions.status is not None and _strip_times(deploy.get("status") or {}) != _strip_times(
        actions.status
    ):
        await io.write_status("apps", "v1", "deployments", deploy, actions.status)


async def job(io: ClusterIO, snap: Snapshot, job_obj: Obj) -> None:
    actions = reconcile_job(job_obj, snap.pods, now_rfc3339())
    for name in actions.delete:
        await io.delete_pod(job_obj["metadata"]["namespace"], name)
    for pod in actions.create:
        with contextlib.suppress(ApiError):
            await io.create("", "v1", "pods", pod)
    if actions.status is not None:
        await io.write_status("batch", "v1", "jobs", job_obj, actions.status)


def _strip_times(status: Mapping[str, Any]) -> Obj:
    out = dict(status)
    out["conditions"] = [
        {k: v for k, v in c.items() if not k.endswith("Time")} for c in status.get("conditions") or ()
    ]
    return out
