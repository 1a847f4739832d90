"""`PodRunner`: KubeRay, the Deployment and Job controllers, the scheduler and the kubelet for the
emulated API server of tests/kube, in one thread with its own event loop.

Every `tick_s` it reads the objects it plays for (one consistent snapshot of the store), runs KubeRay's
reconcile for each RayCluster (`kuberay_reconcile`, `kuberay_status`), the Deployment and Job
controllers (`workloads`), binds new pods to its one node and starts a `kubelet.PodWorker` for each,
stops the workers of deleted pods (graceful deletion: pods carry the runner's finalizer until their
containers are down), and rewrites the cluster DNS. Writes go straight into the store, as the
controllers' API calls would land (they are not the component under test, so they are not
recorded as API calls of any user).

`stop()` stops every pod (SIGTERM, then SIGKILL after `teardown_grace_s`), sweeps any process still
tagged with the runner's id, and removes the pods' directories: nothing outlives the runner.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.kube.cluster import EmulatedCluster
from tests.kube.errors import ApiError
from tests.kube.metadata import now_rfc3339
from tests.kube.podrunner import dns
from tests.kube.podrunner import kuberay_api as K
from tests.kube.podrunner.images import Images
from tests.kube.podrunner.kubelet import PodWorker, Termination
from tests.kube.podrunner.kuberay_pods import (
    DEFAULT_CONFIG,
    KubeRayConfig,
    UnsupportedByRunner,
    head_service,
    headless_worker_service,
)
from tests.kube.podrunner.kuberay_reconcile import VictimOrder, oldest_first, reconcile_pods
from tests.kube.podrunner.kuberay_status import ReconcileError, calculate_status, essence
from tests.kube.podrunner.quantity import parse_quantity
from tests.kube.podrunner.sandbox import Sandbox, tagged
from tests.kube.podrunner.workloads import reconcile_deployment, reconcile_job
from tests.kube.store import ObjectStore

log = logging.getLogger(__name__)
Obj = dict[str, Any]
T = TypeVar("T")
FINALIZER = "podrunner.moeplane.test/kubelet"
API_HOST = "127.0.0.1"  # the emulated API server; its certificate names this address
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
ROOT_CA = "kube-root-ca.crt"
NODE = "podrunner-node"
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery utilrand.String's alphabet


def random_suffix(n: int = 5) -> str:
    return "".join(secrets.choice(_GENERATE_CHARS) for _ in range(n))


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


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (str(obj["metadata"].get("namespace", "")), str(obj["metadata"]["name"]))


class PodRunner:
    """Start with `with PodRunner(cluster, images) as runner:`; see the module docstring."""

    def __init__(
        self,
        cluster: EmulatedCluster,
        images: Images,
        namespaces: Iterable[str] | None = None,
        victim_order: VictimOrder = oldest_first,
        capacity: Mapping[str, str] | None = None,
        tick_s: float = 0.25,
        teardown_grace_s: float = 10.0,
        sandbox_root: Path | None = None,
        kuberay: KubeRayConfig = DEFAULT_CONFIG,
        keep_logs: Path | None = None,
    ) -> None:
        self.kuberay = kuberay
        self.keep_logs = keep_logs
        self.cluster = cluster
        self.images = images
        self.namespaces = set(namespaces) if namespaces is not None else None
        self.victim_order = victim_order
        self.capacity = {k: parse_quantity(v) for k, v in (capacity or {}).items()}
        self.tick_s = tick_s
        self.teardown_grace_s = teardown_grace_s
        self.sandbox_root = sandbox_root
        self.sandbox: Sandbox | None = None
        self.workers: dict[tuple[str, str], PodWorker] = {}
        self._claims: dict[tuple[str, str], Path] = {}
        self.admission: list[Callable[[Obj], str | None]] = []
        self.snapshot = Snapshot()
        self.errors: list[str] = []
        self.host_ip = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._stopping: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._tokens: dict[str, str] = {}  # pod uid -> its service account token
        self.terminations: list[Termination] = []  # every container a pod deletion stopped
        self._ticks = 0

    # ---- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> PodRunner:
        self.sandbox = Sandbox.create(self.sandbox_root)
        self.host_ip = self.sandbox.addresses.node_ip()
        started: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, args=(started,), name="podrunner", daemon=True)
        self._thread.start()
        started.result(timeout=30)
        return self

    def _main(self, started: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            await self._call(self._kubernetes_service)
            started.set_result(None)
            while not self._stop.is_set():
                try:
                    await self._tick()
                except Exception as exc:  # a bad object must not stop the node
                    log.exception("pod runner tick failed")
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.tick_s)
            await self._shutdown()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=self.teardown_grace_s + 60)
        self.sweep()
        if self.sandbox is not None:
            if self.keep_logs is not None:
                self.copy_logs(self.keep_logs)
            self.sandbox.remove()

    def copy_logs(self, target: Path) -> None:
        """Every container's log (all restarts), as `target/<ns>_<pod>/<container>.log`."""
        assert self.sandbox is not None
        for path in (self.sandbox.root / "pods").glob("*/logs/*.log"):
            out = target / path.parent.parent.name / path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)

    async def _shutdown(self) -> None:
        workers = list(self.workers.values())
        await asyncio.gather(*(w.stop(self.teardown_grace_s) for w in workers), return_exceptions=True)
        self.workers.clear()

    def sweep(self) -> list[int]:
        """SIGKILL any process still tagged with this runner's id; returns their pids."""
        if self.sandbox is None:
            return []
        found = tagged(f"{self.sandbox.runner_id}/")
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return found

    def processes(self, pod_uid: str | None = None) -> list[int]:
        """Pids of live processes the runner started (for one pod, by its uid)."""
        if self.sandbox is None:
            return []
        return tagged(f"{self.sandbox.runner_id}/{pod_uid + '/' if pod_uid else ''}")

    # ---- what every pod gets from the node ------------------------------------------------------------
    def run(self, coro: Any, timeout_s: float = 120.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def register_claim(self, namespace: str, claim: str, path: Path) -> None:
        """PersistentVolumeClaim `claim` is backed by the local directory `path` (it binds once it exists)."""
        path.mkdir(parents=True, exist_ok=True)
        self._claims[(namespace, claim)] = path

    def claims(self) -> Mapping[tuple[str, str], Path]:
        return self._claims

    def token(self, pod_uid: str) -> str | None:
        return self._tokens.get(pod_uid)

    def node_env(self) -> Mapping[str, str]:
        """The `kubernetes` Service's variables: the API server, reached on the node's loopback."""
        port = str(self.cluster.port)
        return {
            "KUBERNETES_SERVICE_HOST": API_HOST,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{API_HOST}:{port}",
            f"KUBERNETES_PORT_{port}_TCP": f"tcp://{API_HOST}:{port}",
            "PODNET_NODE_PORTS": f"{API_HOST}:{port}",
        }

    def worker(self, namespace: str, name: str) -> PodWorker | None:
        return self.workers.get((namespace, name))

    def kill_pod_processes(self, namespace: str, name: str, container: str | None = None) -> int:
        """Fault injection: SIGKILL every process of a running pod (the containers then restart)."""
        worker = self.workers.get((namespace, name))
        if worker is None:
            raise KeyError(f"no running pod {namespace}/{name}")
        return int(self.run(self._kill(worker, container)))

    async def _kill(self, worker: PodWorker, container: str | None) -> int:
        return worker.kill_container_processes(container)

    def logs(self, namespace: str, name: str, container: str) -> str:
        assert self.sandbox is not None
        path = self.sandbox.root / "pods" / f"{namespace}_{name}" / "logs" / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def all_logs(self, tail_chars: int = 3000) -> str:
        """Every container log's tail (for a failing test's message)."""
        if self.sandbox is None:
            return ""
        out = []
        for path in sorted((self.sandbox.root / "pods").glob("*/logs/*.log")):
            text = path.read_text(errors="replace")
            out.append(f"==== {path.parent.parent.name}/{path.stem}\n{text[-tail_chars:]}")
        return "\n".join(out)

    # ---- the store -------------------------------------------------------------------------------
    async def _call(self, fn: Callable[[ObjectStore], T]) -> T:
        loop = self.cluster._loop
        assert loop is not None

        async def run() -> T:
            return fn(self.cluster.emulator.store)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))

    def _kubernetes_service(self, store: ObjectStore) -> None:
        """default/kubernetes, as the API server keeps it; here it fronts the emulated API server
        (its port is the server's own: pods reach it on the node's loopback, see node_env)."""
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

    def _take_snapshot(self, store: ObjectStore) -> Snapshot:
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
                current.update({_key(o): o for o in items})
            else:
                current.extend(items)
        return snap

    def lookup(self) -> Callable[[str, str, str], Obj | None]:
        snap = self.snapshot
        tables = {"ConfigMap": snap.configmaps, "Secret": snap.secrets, "PersistentVolumeClaim": snap.pvcs}
        return lambda kind, ns, name: tables[kind].get((ns, name))

    async def write_status(self, pod: Obj, status: Obj) -> None:
        ns, name = _key(pod)

        def run(store: ObjectStore) -> None:
            d = store.registry.resolve("", "v1", "pods")
            live = store.bucket(d.storage_key).get((ns, name))
            if live is None or live["metadata"]["uid"] != pod["metadata"]["uid"]:
                return
            body = copy.deepcopy(live)
            body["status"] = status
            store.replace(d, ns, name, body, subresource="status")

        await self._call(run)

    async def event(self, obj: Obj, kind: str, reason: str, message: str, component: str = "kubelet") -> None:
        meta = obj["metadata"]
        now = now_rfc3339()
        body = {
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

        await self._call(run)

    # ---- the loop --------------------------------------------------------------------------------
    async def _tick(self) -> None:
        self._ticks += 1
        self.snapshot = await self._call(self._take_snapshot)
        for rc in self.snapshot.rayclusters:
            if not rc["metadata"].get("deletionTimestamp"):
                await self._kuberay(rc)
        for deploy in self.snapshot.deployments:
            if not deploy["metadata"].get("deletionTimestamp"):
                await self._deployment(deploy)
        for job in self.snapshot.jobs:
            if not job["metadata"].get("deletionTimestamp"):
                await self._job(job)
        await self._kubelet()
        self._dns()
        await self._bind_claims()

    # KubeRay ----------------------------------------------------------------------------------------------
    async def _kuberay(self, rc: Obj) -> None:
        name, ns = rc["metadata"]["name"], rc["metadata"]["namespace"]
        pods = [
            p
            for p in self.snapshot.pods
            if p["metadata"]["namespace"] == ns
            and (p["metadata"].get("labels") or {}).get(K.RAY_CLUSTER_LABEL) == name
        ]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        error: ReconcileError | None = None
        for svc in filter(None, (head_service(rc), headless_worker_service(rc))):
            if not any(_key(s) == _key(svc) for s in self.snapshot.services):
                await self._create("", "v1", "services", svc)
        try:
            plan = reconcile_pods(
                rc, live, lambda group: f"{group}-{random_suffix()}", self.victim_order, self.kuberay
            )
        except UnsupportedByRunner as exc:
            self.errors.append(str(exc))
            return
        for delete in plan.deletes:
            try:
                await self._delete_pod(ns, delete.name)
                await self.event(
                    rc,
                    "Normal",
                    "DeletedWorkerPod",
                    f"Deleted worker Pod {ns}/{delete.name}: {delete.reason}",
                    component="raycluster-controller",
                )
            except ApiError as exc:
                error = ReconcileError(f"{delete.failure_reason}\n{exc.message}", delete.failure_reason)
        for create in plan.creates:
            refusal = next((m for m in (check(create.pod) for check in self.admission) if m), None)
            try:
                if refusal:
                    raise ApiError(
                        403,
                        "Forbidden",
                        f'pods "{create.pod["metadata"]["generateName"]}" is forbidden: {refusal}',
                    )
                await self._create("", "v1", "pods", create.pod)
            except ApiError as exc:
                error = ReconcileError(f"{create.failure_reason}\n{exc.message}", create.failure_reason)
                await self.event(
                    rc,
                    "Warning",
                    "FailedToCreateWorkerPod",
                    f"Failed to create worker Pod for the cluster {ns}/{name}, {exc.message}",
                    component="raycluster-controller",
                )
                break
        if error is None and plan.error is not None:
            error = ReconcileError(plan.error)
        snap = await self._call(self._take_snapshot)
        pods_now = [
            p
            for p in snap.pods
            if p["metadata"]["namespace"] == ns
            and (p["metadata"].get("labels") or {}).get(K.RAY_CLUSTER_LABEL) == name
        ]
        head_svcs = [
            s
            for s in snap.services
            if s["metadata"]["namespace"] == ns
            and (s["metadata"].get("labels") or {}).get(K.RAY_CLUSTER_LABEL) == name
            and (s["metadata"].get("labels") or {}).get(K.RAY_NODE_TYPE_LABEL) == K.HEAD_NODE
        ]
        live_rc = next((r for r in snap.rayclusters if _key(r) == _key(rc)), None)
        if live_rc is None:
            return
        status = calculate_status(live_rc, pods_now, head_svcs, error, now_rfc3339())
        if essence(status) != essence(live_rc.get("status") or {}):
            await self._write_status("ray.io", "v1", "rayclusters", live_rc, status)

    # workloads ------------------------------------------------------------------------------------
    async def _deployment(self, deploy: Obj) -> None:
        actions = reconcile_deployment(deploy, self.snapshot.pods)
        for name in actions.delete:
            await self._delete_pod(deploy["metadata"]["namespace"], name)
        for pod in actions.create:
            with contextlib.suppress(ApiError):
                await self._create("", "v1", "pods", pod)
        if actions.status is not None:
            old = {k: v for k, v in (deploy.get("status") or {}).items()}
            if _strip_times(old) != _strip_times(actions.status):
                await self._write_status("apps", "v1", "deployments", deploy, actions.status)

    async def _job(self, job: Obj) -> None:
        actions = reconcile_job(job, self.snapshot.pods, now_rfc3339())
        for name in actions.delete:
            await self._delete_pod(job["metadata"]["namespace"], name)
        for pod in actions.create:
            with contextlib.suppress(ApiError):
                await self._create("", "v1", "pods", pod)
        if actions.status is not None:
            await self._write_status("batch", "v1", "jobs", job, actions.status)

    # the node -------------------------------------------------------------------------------------
    def _fits(self, pod: Obj) -> str | None:
        """Why the node cannot hold `pod` (its requests on top of the running pods'), or None."""
        if not self.capacity:
            return None
        used: dict[str, Any] = {}
        for other in self.snapshot.pods:
            if (
                other["spec"].get("nodeName") == NODE
                and other is not pod
                and (other.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            ):
                for k, v in _requests(other).items():
                    used[k] = used.get(k, 0) + v
        short = [
            k
            for k, v in _requests(pod).items()
            if k in self.capacity and used.get(k, 0) + v > self.capacity[k]
        ]
        if short:
            return "0/1 nodes are available: " + ", ".join(f"1 Insufficient {k}" for k in sorted(short)) + "."
        return None

    async def _kubelet(self) -> None:
        assert self.sandbox is not None
        seen = set()
        for pod in self.snapshot.pods:
            key = _key(pod)
            seen.add(key)
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                if key not in self._stopping:
                    self._stopping.add(key)
                    self._spawn(self._terminate(pod))
                continue
            worker = self.workers.get(key)
            if worker is not None and worker.uid != meta["uid"]:
                continue  # the old pod of that name is still stopping
            if worker is not None:
                worker.pod["metadata"] = meta
                if self._ticks % 8 == 0:
                    with contextlib.suppress(Exception):
                        worker.refresh_volumes()
                continue
            if not pod["spec"].get("nodeName"):
                reason = self._fits(pod)
                if reason is not None:
                    await self._unschedulable(pod, reason)
                    continue
                await self._bind(pod)
                continue  # started on the next tick, from the bound object
            if pod["spec"].get("nodeName") != NODE:
                continue
            worker = PodWorker(pod, self.sandbox, self.images, self, NODE, self.host_ip)
            self.workers[key] = worker
            worker.start()
        for key, worker in list(self.workers.items()):
            if key not in seen and key not in self._stopping:
                self._stopping.add(key)
                self._spawn(self._stop_worker(key, worker))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stop_worker(self, key: tuple[str, str], worker: PodWorker) -> None:
        try:
            await worker.stop()
            self.terminations.extend(worker.terminations)
        finally:
            if self.workers.get(key) is worker:
                del self.workers[key]
            self._stopping.discard(key)

    async def _terminate(self, pod: Obj) -> None:
        key = _key(pod)
        worker = self.workers.get(key)
        try:
            if worker is not None and worker.uid == pod["metadata"]["uid"]:
                await worker.stop()
                self.terminations.extend(worker.terminations)
                del self.workers[key]
        finally:
            self._stopping.discard(key)
            await self._release(pod)

    async def _release(self, pod: Obj) -> None:
        ns, name = _key(pod)
        uid = pod["metadata"]["uid"]

        def run(store: ObjectStore) -> None:
            d = store.registry.resolve("", "v1", "pods")
            live = store.bucket(d.storage_key).get((ns, name))
            if live is None or live["metadata"]["uid"] != uid:
                return
            finalizers = [f for f in live["metadata"].get("finalizers") or () if f != FINALIZER]
            store.patch(d, ns, name, "application/merge-patch+json", {"metadata": {"finalizers": finalizers}})

        await self._call(run)

    async def _bind(self, pod: Obj) -> None:
        """Bind to the node, with what the ServiceAccount admission plugin adds on create: the
        service account name and, unless automount is off, its token, CA and namespace at
        /var/run/secrets/kubernetes.io/serviceaccount (a `kube-api-access-*` projected volume)."""
        ns, name = _key(pod)
        account = str(pod["spec"].get("serviceAccountName") or "default")
        token = secrets.token_hex(16)
        ca_pem = self.cluster.certificate.ca_pem.decode()

        def run(store: ObjectStore) -> None:
            d = store.registry.resolve("", "v1", "pods")
            live = store.bucket(d.storage_key).get((ns, name))
            if live is None or live["metadata"].get("deletionTimestamp"):
                return
            self._ensure_namespace_defaults(store, ns, ca_pem)
            sa = store.bucket(("", "serviceaccounts")).get((ns, account))
            if sa is None:
                raise ApiError(403, "Forbidden", f'serviceaccount "{account}" not found')
            spec: Obj = {"nodeName": NODE, "serviceAccountName": account, "serviceAccount": account}
            automount = live["spec"].get(
                "automountServiceAccountToken", sa.get("automountServiceAccountToken", True)
            )
            if automount:
                spec.update(_token_volume(live["spec"]))
                self._tokens[live["metadata"]["uid"]] = token
                self.cluster.emulator.tokens[token] = f"system:serviceaccount:{ns}:{account}"
            finalizers = [*(live["metadata"].get("finalizers") or []), FINALIZER]
            store.patch(
                d,
                ns,
                name,
                "application/merge-patch+json",
                {"metadata": {"finalizers": finalizers}, "spec": spec},
            )

        try:
            await self._call(run)
        except ApiError as exc:
            await self._unschedulable(pod, exc.message)

    @staticmethod
    def _ensure_namespace_defaults(store: ObjectStore, ns: str, ca_pem: str) -> None:
        """What a namespace holds on a real cluster: the `default` ServiceAccount and the
        kube-root-ca.crt ConfigMap (the ServiceAccount and root-CA publisher controllers)."""
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
                    {"metadata": {"name": ROOT_CA}, "data": {"ca.crt": ca_pem}},
                )

    async def _unschedulable(self, pod: Obj, reason: str) -> None:
        status = pod.get("status") or {}
        if any(
            c.get("type") == "PodScheduled" and c.get("message") == reason
            for c in status.get("conditions") or ()
        ):
            return
        await self.write_status(
            pod,
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": reason,
                        "lastProbeTime": None,
                        "lastTransitionTime": now_rfc3339(),
                    }
                ],
            },
        )
        await self.event(pod, "Warning", "FailedScheduling", reason, component="default-scheduler")

    def _dns(self) -> None:
        assert self.sandbox is not None
        records = dns.records(self.snapshot.services, self.snapshot.pods)
        records.append(("kubernetes.default.svc.cluster.local", API_HOST))
        self.sandbox.hosts.write(records)

    async def _bind_claims(self) -> None:
        for key, pvc in self.snapshot.pvcs.items():
            if key in self._claims and (pvc.get("status") or {}).get("phase") != "Bound":
                storage = (
                    ((pvc.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", "1Gi")
                )
                await self._write_status(
                    "",
                    "v1",
                    "persistentvolumeclaims",
                    pvc,
                    {
                        "phase": "Bound",
                        "accessModes": (pvc.get("spec") or {}).get("accessModes", ["ReadWriteOnce"]),
                        "capacity": {"storage": storage},
                    },
                )

    # ---- store writes ----------------------------------------------------------------------------
    async def _create(self, group: str, version: str, plural: str, body: Obj) -> Obj:
        def run(store: ObjectStore) -> Obj:
            d = store.registry.resolve(group, version, plural)
            return store.create(d, body["metadata"].get("namespace"), body)

        return await self._call(run)

    async def _delete_pod(self, ns: str, name: str) -> None:
        def run(store: ObjectStore) -> None:
            d = store.registry.resolve("", "v1", "pods")
            with contextlib.suppress(ApiError):
                if store.bucket(d.storage_key).get((ns, name)) is not None:
                    store.delete(d, ns, name)

        await self._call(run)

    async def _write_status(self, group: str, version: str, plural: str, obj: Obj, status: Obj) -> None:
        ns, name = _key(obj)

        def run(store: ObjectStore) -> None:
            d = store.registry.resolve(group, version, plural)
            live = store.bucket(d.storage_key).get((ns or "", name))
            if live is None or live["metadata"]["uid"] != obj["metadata"]["uid"]:
                return
            body = copy.deepcopy(live)
            body["status"] = status
            store.replace(d, ns or None, name, body, subresource="status")

        await self._call(run)

    # ---- waiting (tests) -------------------------------------------------------------------------
    def wait_for(
        self, predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.25
    ) -> T:
        deadline = time.monotonic() + timeout_s
        last = predicate()
        while not last:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}\n{self.all_logs()}")
            time.sleep(interval_s)
            last = predicate()
        return last


def _token_volume(spec: Obj) -> Obj:
    """The spec fields admission adds for the service account token (volumes and mounts)."""
    volume_name = f"kube-api-access-{random_suffix()}"
    volume = {
        "name": volume_name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": ROOT_CA, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [
                            {
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }
    out: Obj = {"volumes": [*(spec.get("volumes") or []), volume]}
    for key in ("initContainers", "containers"):
        containers = copy.deepcopy(spec.get(key) or [])
        for c in containers:
            mounts = c.setdefault("volumeMounts", [])
            if not any(m.get("mountPath") == SA_MOUNT for m in mounts):
                mounts.append({"name": volume_name, "mountPath": SA_MOUNT, "readOnly": True})
        if containers:
            out[key] = containers
    return out


def _requests(pod: Obj) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for c in (pod.get("spec") or {}).get("containers") or ():
        for k, v in ((c.get("resources") or {}).get("requests") or {}).items():
            total[k] = total.get(k, 0) + parse_quantity(v)
    return total


def _strip_times(status: Mapping[str, Any]) -> Obj:
    out = dict(status)
    out["conditions"] = [
        {k: v for k, v in c.items() if not k.endswith("Time")} for c in status.get("conditions") or ()
    ]
    return out


def secret_value(secret: Mapping[str, Any], key: str) -> str:
    return base64.b64decode((secret.get("data") or {})[key]).decode()
