"""The k8s_e2e stack: the emulated API server, the real `kubectl`, the real operator (`moeplane
operator`, as tests/operator's e2e runs it), the pod runner (KubeRay + kubelet) and a Redis.

Redis runs as a service outside the pods (the chart's `redis.enabled=false` with an external URL),
on one of the pod network's node addresses, so the operator on this machine and the pods reach it
at the same URL. Every worker and frontend pod runs `ghcr.io/moeplane/moeplane-worker:<tag>`,
which is this checkout's environment (any tag: a rollout changes the tag, not the code).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import yaml
from moeplane.workers.net import free_port

from moeplane.bus.keys import DeploymentKeys
from tests.k8s_e2e.sampler import read_registry
from tests.kube.cluster import EmulatedCluster
from tests.kube.kuberay import KubeRayDriver
from tests.kube.operator_proc import operator_process
from tests.kube.podrunner import dns
from tests.kube.podrunner.images import Images, venv_image
from tests.kube.podrunner.runner import PodRunner

ROOT = Path(__file__).resolve().parents[2]
WORKER_IMAGE = "ghcr.io/moeplane/moeplane-worker:0.1.0"
MANAGED = "app.kubernetes.io/managed-by=moeplane-operator"
POOL_CONTAINER = "moeplane-pool"


@contextmanager
def redis_server(host: str, workdir: Path) -> Iterator[str]:
    """A password-protected redis-server on `host`; yields its URL."""
    port, password = free_port(host), secrets.token_hex(8)
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed (make sysdeps)"
    proc = subprocess.Popen(
        [
            exe,
            "--bind",
            host,
            "--port",
            str(port),
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://:{password}@{host}:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        client.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@dataclass
class E2EStack:
    cluster: EmulatedCluster
    runner: PodRunner
    redis_url: str
    operator: subprocess.Popen[bytes]
    manifest: dict[str, Any]
    manifest_path: Path
    workdir: Path

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.manifest["metadata"].get("namespace", "default"))

    @property
    def keys(self) -> DeploymentKeys:
        return DeploymentKeys(self.namespace, self.name)

    @property
    def served_model(self) -> str:
        return str(self.manifest["spec"]["model"].get("servedModelName") or self.name)

    def kubectl(
        self, *args: str, check: bool = True, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, check=check, timeout_s=timeout_s)

    def get_json(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", *args, "-n", self.namespace, "-o", "json").stdout))

    def items(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = [kind] + (["-l", selector] if selector else [])
        return list(self.get_json(*args)["items"])

    # ---- capacity ------------------------------------------------------------------------------------
    def desired_groups(self) -> int:
        spec = self.get_json("moedeployment", self.name)["spec"]
        return int(spec["prefill"].get("replicas", 1)) + int(spec["decode"].get("replicas", 1))

    def provisioned_groups(self) -> int:
        """EP groups the deployment's RayClusters ask for (read straight from the store: cheap)."""
        found = self.cluster.list("ray.io/v1", "RayCluster", self.namespace)
        return sum(
            int(g.get("replicas") or 0)
            for rc in found
            if (rc["metadata"].get("labels") or {}).get("moeplane.io/deployment") == self.name
            and not rc["metadata"].get("deletionTimestamp")
            for g in rc["spec"].get("workerGroupSpecs") or []
        )

    def serving(self) -> dict[str, set[str]]:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            return read_registry(client, self.keys)[0]
        finally:
            client.close()

    def frontend_endpoint(self) -> str | None:
        """A ready endpoint of the frontend Service (host:port), as a Service client reaches it."""
        snap = self.runner.snapshot
        svc = next(
            (
                s
                for s in snap.services
                if s["metadata"]["name"] == f"{self.name}-frontend"
                and s["metadata"]["namespace"] == self.namespace
            ),
            None,
        )
        if svc is None:
            return None
        ready = [p for p in dns.endpoints(svc, snap.pods) if dns._ready(p)]
        if not ready:
            return None
        port = int(svc["spec"]["ports"][0]["port"])
        return f"{ready[0]['status']['podIP']}:{port}"

    # ---- diagnosis -----------------------------------------------------------------------------------
    def pool_sidecar_failure(self) -> str | None:
        """The log of a `moeplane pool` sidecar that exited (it never exits while it serves)."""
        for pod in self.runner.snapshot.pods:
            for status in (pod.get("status") or {}).get("containerStatuses") or ():
                if status["name"] != POOL_CONTAINER:
                    continue
                ended = status.get("lastState", {}).get("terminated") or status.get("state", {}).get(
                    "terminated"
                )
                if ended:
                    log = self.runner.logs(
                        pod["metadata"]["namespace"], pod["metadata"]["name"], POOL_CONTAINER
                    )
                    return (
                        f"{pod['metadata']['name']}/{POOL_CONTAINER} exited with {ended.get('exitCode')} "
                        f"(restarts: {status.get('restartCount')}):\n{log[-2500:]}"
                    )
        return None

    def describe(self) -> str:
        """Pods and their containers, for a failing step's message."""
        lines = []
        for pod in self.runner.snapshot.pods:
            states = [
                f"{s['name']}:{next(iter(s.get('state') or {'?': 0}))}{'+ready' if s.get('ready') else ''}"
                f"/r{s.get('restartCount', 0)}"
                for s in (pod.get("status") or {}).get("containerStatuses") or ()
            ]
            lines.append(
                f"{pod['metadata']['name']} {(pod.get('status') or {}).get('phase')} {' '.join(states)}"
            )
        return "\n".join(lines)


def load_manifest(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    found = [d for d in docs if d.get("kind") == "MoEDeployment"]
    assert len(found) == 1, f"{path} must hold exactly one MoEDeployment"
    return dict(found[0])


@contextmanager
def e2e_stack(workdir: Path, manifest_path: Path) -> Iterator[E2EStack]:
    """The cluster and its controllers up, with no deployment yet (step 1 applies it)."""
    images = Images()
    images.register("ghcr.io/moeplane/moeplane-worker:*", venv_image("moeplane"))
    images.register("ghcr.io/moeplane/moeplane:*", venv_image("moeplane"))  # the chart's (hooks)
    (workdir / "kube").mkdir(parents=True, exist_ok=True)
    with EmulatedCluster(users=("admin", "operator"), workdir=workdir / "kube") as cluster:
        KubeRayDriver(cluster).install_crd()  # KubeRay's chart serves RayClusters; the runner plays KubeRay
        with (
            PodRunner(cluster, images, teardown_grace_s=5.0, keep_logs=workdir / "pod-logs") as runner,
            redis_server(
                runner.sandbox.addresses.node_ip() if runner.sandbox else "127.0.0.1", workdir
            ) as url,
            operator_process(
                cluster, workdir / "operator.log", "--image", WORKER_IMAGE, "--redis-url", url
            ) as operator,
        ):
            yield E2EStack(
                cluster, runner, url, operator.proc, load_manifest(manifest_path), manifest_path, workdir
            )
