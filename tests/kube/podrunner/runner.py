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
import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from tests.kube.cluster import EmulatedCluster
from tests.kube.podrunner import controllers, dns
from tests.kube.podrunner.clusterio import API_HOST, NODE, ClusterIO, Snapshot
from tests.kube.podrunner.clusterio import key as object_key
from tests.kube.podrunner.images import Images
from tests.kube.podrunner.kubelet import PodWorker
from tests.kube.podrunner.kuberay_pods import DEFAULT_CONFIG, KubeRayConfig, UnsupportedByRunner
from tests.kube.podrunner.kuberay_reconcile import VictimOrder, oldest_first
from tests.kube.podrunner.podspec import Lookup
from tests.kube.podrunner.podstate import Termination
from tests.kube.podrunner.quantity import parse_quantity
from tests.kube.podrunner.sandbox import Sandbox, tagged

log = logging.getLogger(__name__)
Obj = dict[str, Any]
T = TypeVar("T")


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
        self.cluster = cluster
        self.images = images
        self.io = ClusterIO(cluster, namespaces)
        self.kuberay = controllers.KubeRay(kuberay, victim_order)
        self.keep_logs = keep_logs
        self.capacity = {k: parse_quantity(v) for k, v in (capacity or {}).items()}
        self.tick_s = tick_s
        self.teardown_grace_s = teardown_grace_s
        self.sandbox_root = sandbox_root
        self.sandbox: Sandbox | None = None
        self.workers: dict[tuple[str, str], PodWorker] = {}
        self._claims: dict[tuple[str, str], Path] = {}
        self.snapshot = Snapshot()
        self.errors: list[str] = []
        self.host_ip = ""
        self.terminations: list[Termination] = []  # every container a pod deletion stopped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._stopping: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._seen_version = -1
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
            await self.io.call(self.io.kubernetes_service)
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
        # Ray's own logs (raylet, GCS, workers), kept in each container's private /tmp, or in a
        # volume shared by the head's containers (mounted at /tmp/ray).
        pods = self.sandbox.root / "pods"
        found = [
            *pods.glob("*/containers/*/tmp/ray/session_2*/logs/*"),
            *pods.glob("*/volumes/*/session_2*/logs/*"),
        ]
        for path in found:
            if path.is_file() and path.suffix in (".out", ".err", ".log"):
                parts = path.relative_to(pods).parts
                out = target / parts[0] / f"{parts[2]}-ray" / path.parent.parent.name / path.name
                out.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
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

    @property
    def admission(self) -> list[controllers.Admission]:
        """Checks that can refuse KubeRay's pod creations (a quota, a webhook): tests append."""
        return self.kuberay.admission

    def token(self, pod_uid: str) -> str | None:
        return self.io.tokens.get(pod_uid)

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

    # ---- what a pod's kubelet needs (PodIO) -----------------------------------------------------------
    def lookup(self) -> Lookup:
        snap = self.snapshot
        tables = {"ConfigMap": snap.configmaps, "Secret": snap.secrets, "PersistentVolumeClaim": snap.pvcs}
        return lambda kind, ns, name: tables[kind].get((ns, name))

    async def write_status(self, pod: Obj, status: Obj) -> None:
        await self.io.write_status("", "v1", "pods", pod, status)

    async def event(self, obj: Obj, kind: str, reason: str, message: str) -> None:
        await self.io.event(obj, kind, reason, message)

    # ---- the loop --------------------------------------------------------------------------------
    async def _tick(self) -> None:
        self._ticks += 1
        self.snapshot = snap = await self.io.snapshot()
        # The controllers are level-triggered; with nothing changed since their last pass (the same
        # resourceVersion) they would decide nothing new, so they skip it (the kubelet never does).
        version = await self.io.call(lambda store: store.resource_version)
        if version != self._seen_version or self._ticks % 20 == 0:
            await self._controllers(snap)
        self._seen_version = await self.io.call(lambda store: store.resource_version)
        await self._kubelet()
        self._dns()
        await self._bind_claims()

    async def _controllers(self, snap: Snapshot) -> None:
        for rc in snap.rayclusters:
            if not rc["metadata"].get("deletionTimestamp"):
                try:
                    await self.kuberay.reconcile(self.io, snap, rc)
                except UnsupportedByRunner as exc:
                    self._error(str(exc))
        for deploy in snap.deployments:
            if not deploy["metadata"].get("deletionTimestamp"):
                await controllers.deployment(self.io, snap, deploy)
        for job in snap.jobs:
            if not job["metadata"].get("deletionTimestamp"):
                await controllers.job(self.io, snap, job)

    def _error(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)

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
            key = object_key(pod)
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
                    await self.io.unschedulable(pod, reason)
                    continue
                refused = await self.io.bind(pod)
                if refused:
                    await self.io.unschedulable(pod, refused)
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
        key = object_key(pod)
        worker = self.workers.get(key)
        try:
            if worker is not None and worker.uid == pod["metadata"]["uid"]:
                await worker.stop()
                self.terminations.extend(worker.terminations)
                del self.workers[key]
        finally:
            self._stopping.discard(key)
            await self.io.release(pod)

    def _dns(self) -> None:
        assert self.sandbox is not None
        records = dns.records(self.snapshot.services, self.snapshot.pods)
        records.append(("kubernetes.default.svc.cluster.local", API_HOST))
        self.sandbox.hosts.write(records)

    async def _bind_claims(self) -> None:
        for claim, pvc in self.snapshot.pvcs.items():
            if claim in self._claims and (pvc.get("status") or {}).get("phase") != "Bound":
                storage = (
                    ((pvc.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", "1Gi")
                )
                await self.io.write_status(
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


def _requests(pod: Obj) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for c in (pod.get("spec") or {}).get("containers") or ():
        for k, v in ((c.get("resources") or {}).get("requests") or {}).items():
            total[k] = total.get(k, 0) + parse_quantity(v)
    return total
