"""The pod runner playing KubeRay: RayCluster pods, replica groups, workersToDelete, restarts, status,
and one RayCluster running real Ray with KubeRay's own commands and probes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kube.cluster import EmulatedCluster
from tests.kube.kuberay import KubeRayDriver
from tests.kube.podrunner import kuberay_api as K
from tests.kube.podrunner.kuberay_pods import KubeRayConfig
from tests.kube.podrunner.runner import PodRunner
from tests.kube.podrunner_fixtures import (
    TEST_IMAGE,
    apply,
    container_status,
    pod_runner,
    pods,
    ready,
    running_pods,
)

pytestmark = pytest.mark.integration
__all__ = ["pod_runner"]

# The overwrite annotation keeps each container's own command (KubeRay still computes and exports
# its `ray start`), and a KubeRay deployed with ENABLE_INIT_CONTAINER_INJECTION=false adds no
# wait-gcs-ready init container, so the replica-group mechanics run on cheap processes.
CHEAP_KUBERAY = KubeRayConfig(init_container_injection=False)
CHEAP = {
    "name": "ray",
    "image": TEST_IMAGE,
    "command": ["sleep", "1000"],
    "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
    "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 5},
}


def raycluster(
    name: str,
    replicas: int,
    hosts: int,
    container: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    def template(c: dict[str, Any]) -> dict[str, Any]:
        return {
            "metadata": {"annotations": annotations or {}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [c]},
        }

    c = container or CHEAP
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name},
        "spec": {
            "rayVersion": "2.40.0",
            "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": template(c)},
            "workerGroupSpecs": [
                {
                    "groupName": "g",
                    "replicas": replicas,
                    "minReplicas": 0,
                    "maxReplicas": 8,
                    "numOfHosts": hosts,
                    "rayStartParams": {"num-cpus": "1"},
                    "template": template(c),
                }
            ],
        },
    }


def workers(cluster: EmulatedCluster, name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in pods(cluster, selector=f"ray.io/cluster={name},ray.io/node-type=worker")
        if not p["metadata"].get("deletionTimestamp")
    ]


def replica_groups(found: list[dict[str, Any]]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for p in found:
        labels = p["metadata"]["labels"]
        groups.setdefault(labels[K.RAY_WORKER_REPLICA_NAME_LABEL], []).append(labels[K.RAY_HOST_INDEX_LABEL])
    return {k: sorted(v) for k, v in groups.items()}


def conditions(rc: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (rc.get("status") or {}).get("conditions") or ()}


@pytest.fixture
def rayclusters(kube_cluster: EmulatedCluster) -> EmulatedCluster:
    KubeRayDriver(kube_cluster).install_crd()  # the CRD only: the pod runner plays the controller
    return kube_cluster


@pytest.fixture
def cheap_runner(rayclusters: EmulatedCluster) -> Iterator[PodRunner]:
    with running_pods(rayclusters, kuberay=CHEAP_KUBERAY) as runner:
        yield runner


def test_replica_groups_scale_down_whole_and_honour_workers_to_delete(
    rayclusters: EmulatedCluster, cheap_runner: PodRunner
) -> None:
    cluster = rayclusters
    apply(
        cluster,
        raycluster("mh", replicas=2, hosts=2, annotations={K.OVERWRITE_CONTAINER_CMD_ANNOTATION: "true"}),
    )

    def status_ready() -> dict[str, Any] | None:
        rc = cluster.get("ray.io/v1", "RayCluster", "mh")
        up = (rc.get("status") or {}).get("readyWorkerReplicas") == 4
        return rc if up and conditions(rc).get(K.HEAD_POD_READY) == "True" else None

    rc = cheap_runner.wait_for(status_ready, 90, "4 ready workers and a ready head")
    assert conditions(rc)[K.HEAD_POD_READY] == "True" and conditions(rc)[K.RAY_CLUSTER_PROVISIONED] == "True"
    assert rc["status"]["state"] == "ready" and rc["status"]["desiredWorkerReplicas"] == 4
    groups = replica_groups(workers(cluster, "mh"))
    assert len(groups) == 2 and all(hosts == ["0", "1"] for hosts in groups.values())
    assert cluster.find("v1", "Service", "mh-head-svc") is not None
    assert cluster.find("v1", "Service", "mh-headless") is not None
    generated = {e["name"]: e.get("value") for e in workers(cluster, "mh")[0]["spec"]["containers"][0]["env"]}
    assert generated[K.KUBERAY_GEN_RAY_START_CMD].startswith("ray start  --address=mh-head-svc.default.svc")
    uids = {
        p["metadata"]["uid"]: p["metadata"]["labels"][K.RAY_WORKER_REPLICA_NAME_LABEL]
        for p in workers(cluster, "mh")
    }

    # Scale down by one: KubeRay deletes one whole replica group, and its processes end.
    cluster.kubectl(
        "patch",
        "raycluster",
        "mh",
        "--type=json",
        "-p",
        json.dumps([{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 1}]),
    )
    cheap_runner.wait_for(
        lambda: len(replica_groups(workers(cluster, "mh"))) == 1 and len(workers(cluster, "mh")) == 2,
        60,
        "one replica group left",
    )
    kept = next(iter(replica_groups(workers(cluster, "mh"))))
    gone = {u for u, r in uids.items() if r != kept}
    assert len(gone) == 2
    cheap_runner.wait_for(
        lambda: not any(cheap_runner.processes(u) for u in gone), 30, "their processes to end"
    )

    # workersToDelete naming one host deletes its whole group; replicas 1 brings a new group.
    victim = workers(cluster, "mh")[0]["metadata"]["name"]
    cluster.kubectl(
        "patch",
        "raycluster",
        "mh",
        "--type=json",
        "-p",
        json.dumps(
            [
                {
                    "op": "add",
                    "path": "/spec/workerGroupSpecs/0/scaleStrategy",
                    "value": {"workersToDelete": [victim]},
                }
            ]
        ),
    )
    cheap_runner.wait_for(
        lambda: (lambda g: len(g) == 1 and kept not in g and all(h == ["0", "1"] for h in g.values()))(
            replica_groups(workers(cluster, "mh"))
        ),
        60,
        "a new whole replica group in place of the deleted one",
    )


def test_a_killed_worker_restarts_in_place_and_status_follows(
    rayclusters: EmulatedCluster, cheap_runner: PodRunner
) -> None:
    cluster = rayclusters
    apply(
        cluster,
        raycluster("one", replicas=1, hosts=1, annotations={K.OVERWRITE_CONTAINER_CMD_ANNOTATION: "true"}),
    )
    cheap_runner.wait_for(
        lambda: len(workers(cluster, "one")) == 1 and ready(workers(cluster, "one")[0]), 60, "the worker"
    )
    worker = workers(cluster, "one")[0]
    assert cheap_runner.kill_pod_processes("default", worker["metadata"]["name"]) >= 1
    cheap_runner.wait_for(
        lambda: (
            container_status(workers(cluster, "one")[0], "ray").get("restartCount") == 1
            and ready(workers(cluster, "one")[0])
        ),
        60,
        "the container to restart",
    )
    assert workers(cluster, "one")[0]["metadata"]["uid"] == worker["metadata"]["uid"]  # same pod


def test_refused_pod_creation_is_a_replica_failure(
    rayclusters: EmulatedCluster, cheap_runner: PodRunner
) -> None:
    cluster = rayclusters
    cheap_runner.admission.append(
        lambda pod: (
            "exceeded quota: gpu, requested: nvidia.com/gpu=8"
            if pod["metadata"]["labels"].get(K.RAY_NODE_TYPE_LABEL) == "worker"
            else None
        )
    )
    apply(
        cluster,
        raycluster("q", replicas=1, hosts=1, annotations={K.OVERWRITE_CONTAINER_CMD_ANNOTATION: "true"}),
    )

    def failure() -> dict[str, Any] | None:
        rc = cluster.get("ray.io/v1", "RayCluster", "q")
        return next(
            (c for c in (rc.get("status") or {}).get("conditions") or () if c["type"] == K.REPLICA_FAILURE),
            None,
        )

    cond = cheap_runner.wait_for(failure, 60, "ReplicaFailure")
    assert cond["status"] == "True" and cond["reason"] == K.FAILED_CREATE_WORKER_POD
    assert "exceeded quota" in cond["message"]
    cheap_runner.admission.clear()
    cheap_runner.wait_for(lambda: failure() is None, 60, "ReplicaFailure to clear once the pod is created")


def test_real_ray_runs_kuberays_commands_and_probes(
    rayclusters: EmulatedCluster, pod_runner: PodRunner
) -> None:
    """KubeRay's generated `ray start --head` and `ray start --address=<head-svc>:6379 --block`, its
    wait-gcs-ready init container and its wget readiness probes, on real Ray."""
    cluster = rayclusters
    ray_container = {"name": "ray", "image": TEST_IMAGE}
    apply(cluster, raycluster("real", replicas=1, hosts=1, container=ray_container))

    def up() -> dict[str, Any] | None:
        rc = cluster.get("ray.io/v1", "RayCluster", "real")
        return (
            rc
            if (rc.get("status") or {}).get("readyWorkerReplicas") == 1
            and conditions(rc).get(K.HEAD_POD_READY) == "True"
            else None
        )

    pod_runner.wait_for(up, 240, "real Ray head and worker ready by KubeRay's probes")
    # A pod of the cluster's namespace reaches the head through its Service name and sees both nodes.
    apply(
        cluster,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "status"},
            "spec": {
                "backoffLimit": 2,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "c",
                                "image": TEST_IMAGE,
                                "command": [
                                    "python",
                                    "-c",
                                    (
                                        "import ray; ray.init(address='ray://real-head-svc:10001'); "
                                        "print('nodes', len([n for n in ray.nodes() if n['Alive']]))"
                                    ),
                                ],
                            }
                        ],
                    }
                },
            },
        },
    )
    job = pod_runner.wait_for(
        lambda: (
            any(
                c["type"] in ("Complete", "Failed")
                for c in (cluster.get("batch/v1", "Job", "status").get("status") or {}).get("conditions")
                or ()
            )
            and cluster.get("batch/v1", "Job", "status")
        ),
        180,
        "the Ray client Job",
    )
    logs = "".join(
        pod_runner.logs("default", p["metadata"]["name"], "c")
        for p in pods(cluster, selector="job-name=status")
    )
    assert any(c["type"] == "Complete" for c in job["status"]["conditions"]), logs
    assert "nodes 2" in logs
