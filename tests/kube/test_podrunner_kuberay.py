"""The pod runner's port of KubeRay v1.6.2: pods, reconcile and status (pure).

Expected strings marked "KubeRay's test" are copied from ray-operator/controllers/ray/common/pod_test.go
at v1.6.2; the others follow the Go code cited in tests/kube/podrunner/kuberay_*.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from moeplane.api.enums import Role
from moeplane.api.hardware import HardwarePreset
from moeplane.api.runtime import resolve_runtime
from moeplane.api.spec import parse_deployment
from moeplane.operator.builders.pools import build_pool
from moeplane.operator.builders.raycluster import build_raycluster
from moeplane.operator.config import OperatorConfig

from tests.kube.podrunner import kuberay_api as K
from tests.kube.podrunner.kuberay_pods import head_pod, worker_pod
from tests.kube.podrunner.kuberay_reconcile import reconcile_pods
from tests.kube.podrunner.kuberay_services import head_service, headless_worker_service
from tests.kube.podrunner.kuberay_start import convert_param_map, generate_ray_start_command
from tests.kube.podrunner.kuberay_status import ReconcileError, calculate_status
from tests.kube.podrunner.quantity import parse_quantity, value

pytestmark = pytest.mark.unit
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def operator_raycluster(hosts_per_group: int = 1, replicas: int = 1) -> dict[str, Any]:
    """The decode RayCluster the operator builds for examples/tiny-cpu.yaml (with gpusPerNode to
    make multi-host groups), as stored: with a uid."""
    doc = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    doc["spec"]["hardware"]["gpusPerNode"] = 2 // hosts_per_group
    doc["spec"]["decode"]["replicas"] = replicas
    doc["spec"]["decode"]["maxReplicas"] = max(replicas, 2)
    deployment = parse_deployment(doc)
    layout = resolve_runtime(deployment).pool(Role.DECODE)
    pool_body = build_pool(deployment, "tiny", "default", Role.DECODE, layout, replicas)
    from moeplane.api.spec import parse_pool

    pool = parse_pool(pool_body)
    rc = build_raycluster(pool.spec, "tiny-decode", "default", HardwarePreset.CPU, OperatorConfig())
    rc["metadata"]["uid"] = "rc-uid"
    rc["metadata"]["generation"] = 1
    return rc


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


# ---- ray start -----------------------------------------------------------------------------------
def test_gpu_and_tpu_limits_become_ray_start_flags_as_in_kuberays_test() -> None:
    assert generate_ray_start_command(K.WORKER_NODE, {}, {"limits": {"nvidia.com/gpu": "1"}}) == (
        "ray start  --num-gpus=1 "
    )  # KubeRay's test "WorkerNode with GPU"
    assert generate_ray_start_command(K.WORKER_NODE, {}, {"limits": {"nvidia.com/mig-2g.32gb": "1"}}) == (
        "ray start  --num-gpus=1 "
    )  # KubeRay's test "WorkerNode with MIG GPU"
    assert generate_ray_start_command(K.WORKER_NODE, {}, {"limits": {"google.com/tpu": "4"}}) == (
        "ray start  --resources='{\"TPU\":4}' "
    )  # KubeRay's test "WorkerNode with TPU"


def test_cpus_come_from_limits_then_requests_rounded_up() -> None:
    assert "--num-cpus=1 " in generate_ray_start_command(K.WORKER_NODE, {}, {"requests": {"cpu": "500m"}})
    assert "--num-cpus=3 " in generate_ray_start_command(
        K.WORKER_NODE, {}, {"limits": {"cpu": "2500m"}, "requests": {"cpu": "1"}}
    )
    assert "--memory=4294967296 " in generate_ray_start_command(
        K.HEAD_NODE, {}, {"limits": {"memory": "4Gi"}}
    )
    assert value("100m") == 1 and parse_quantity("1.5Gi") == 1536 * 2**20


def test_boolean_params_are_bare_flags_and_sorted() -> None:
    assert convert_param_map(
        {"block": "true", "num-cpus": "0", "include-dashboard": "false", "x": "False"}
    ) == (" --block  --include-dashboard=false  --num-cpus=0 ")


# ---- pods ----------------------------------------------------------------------------------------
def test_head_pod_runs_ray_start_head_and_keeps_the_sidecar_as_written() -> None:
    rc = operator_raycluster()
    pod = head_pod(rc)
    ray, sidecar = pod["spec"]["containers"]
    assert ray["command"] == ["/bin/bash", "-c", "--"]
    assert ray["args"] == [
        "ulimit -n 65536; ray start --head  --block  --dashboard-agent-listen-port=52365  "
        "--dashboard-host=0.0.0.0  --memory=8589934592  --metrics-export-port=8080  "
        "--num-cpus=0  --num-gpus=0 "
    ]
    original = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][1]
    assert sidecar == original  # KubeRay touches only the first container
    env = env_of(ray)
    assert env[K.RAY_ADDRESS] == "127.0.0.1:6379" and env[K.RAY_PORT] == "6379"
    assert K.FQ_RAY_IP not in env  # only workers get the head's FQDN
    assert env[K.RAY_CLUSTER_NAME] == {"fieldRef": {"fieldPath": "metadata.labels['ray.io/cluster']"}}
    assert env[K.KUBERAY_GEN_RAY_START_CMD].startswith("ray start --head")
    labels = pod["metadata"]["labels"]
    name = rc["metadata"]["name"]
    assert labels[K.RAY_NODE_TYPE_LABEL] == "head" and labels[K.RAY_NODE_GROUP_LABEL] == "headgroup"
    assert labels[K.RAY_CLUSTER_LABEL] == name and labels[K.RAY_ID_LABEL] == f"{name}-head"
    assert labels["moeplane.io/pool"] == "tiny-decode"  # the template's labels are kept
    assert pod["metadata"]["generateName"] == f"{name}-head-"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "rc-uid"
    # rayVersion 2.40.0 < 2.53: KubeRay probes with wget against the agent and the dashboard.
    probe = ray["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["bash", "-c"] and "localhost:52365/api/local_raylet_healthz" in probe[2]
    assert "localhost:8265/api/gcs_healthz" in probe[2]
    assert (
        ray["readinessProbe"]["initialDelaySeconds"] == 10 and ray["readinessProbe"]["failureThreshold"] == 10
    )
    assert any(m["mountPath"] == "/dev/shm" for m in ray["volumeMounts"])
    assert any(
        v["name"] == "shared-mem" and v["emptyDir"]["medium"] == "Memory" for v in pod["spec"]["volumes"]
    )


def test_unified_health_check_from_ray_2_53() -> None:
    rc = operator_raycluster()
    rc["spec"]["rayVersion"] = "2.60.0"
    probe = head_pod(rc)["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"] == {"path": "/api/healthz", "port": 52365} and "exec" not in probe


def test_worker_pod_waits_for_gcs_and_joins_the_head_service() -> None:
    rc = operator_raycluster()
    group = rc["spec"]["workerGroupSpecs"][0]
    pod = worker_pod(rc, group, "", 3, 0)
    fqdn = f"{rc['metadata']['name']}-head-svc.default.svc.cluster.local"
    ray = pod["spec"]["containers"][0]
    assert ray["args"][0].startswith(f"ulimit -n 65536; ray start  --address={fqdn}:6379  --block ")
    assert "--num-cpus=2 " in ray["args"][0]
    init = pod["spec"]["initContainers"][0]
    assert init["name"] == "wait-gcs-ready" and f"ray health-check --address {fqdn}:6379" in init["args"][0]
    assert (
        env_of(init)[K.FQ_RAY_IP] == fqdn and env_of(init)[K.RAY_IP] == f"{rc['metadata']['name']}-head-svc"
    )
    env = env_of(ray)
    assert env[K.FQ_RAY_IP] == fqdn and env[K.RAY_ADDRESS] == f"{fqdn}:6379"
    labels = pod["metadata"]["labels"]
    assert labels[K.RAY_WORKER_REPLICA_INDEX_LABEL] == "3"
    assert K.RAY_WORKER_REPLICA_NAME_LABEL not in labels  # single host: index only
    assert pod["metadata"]["generateName"] == f"{rc['metadata']['name']}-decode-worker-"


def test_multi_host_worker_pods_carry_the_replica_group_labels() -> None:
    rc = operator_raycluster(hosts_per_group=2)
    group = rc["spec"]["workerGroupSpecs"][0]
    assert group["numOfHosts"] == 2
    labels = worker_pod(rc, group, "decode-abcde", 1, 1)["metadata"]["labels"]
    assert labels[K.RAY_WORKER_REPLICA_NAME_LABEL] == "decode-abcde"
    assert labels[K.RAY_WORKER_REPLICA_INDEX_LABEL] == "1" and labels[K.RAY_HOST_INDEX_LABEL] == "1"
    svc = headless_worker_service(rc)
    assert svc is not None and svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    assert headless_worker_service(operator_raycluster()) is None


def test_head_service_is_headless_with_the_head_container_ports() -> None:
    rc = operator_raycluster()
    svc = head_service(rc)
    assert svc["metadata"]["name"] == f"{rc['metadata']['name']}-head-svc"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
        "client": 10001,
        "dashboard": 8265,
        "gcs": 6379,
        "metrics": 8080,
    }


def test_overwrite_annotation_keeps_the_command_and_exports_the_generated_one() -> None:
    rc = operator_raycluster()
    rc["spec"]["headGroupSpec"]["template"]["metadata"]["annotations"] = {
        K.OVERWRITE_CONTAINER_CMD_ANNOTATION: "true"
    }
    rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["command"] = ["sleep", "1000"]
    ray = head_pod(rc)["spec"]["containers"][0]
    assert ray["command"] == ["sleep", "1000"] and "args" not in ray
    assert env_of(ray)[K.KUBERAY_GEN_RAY_START_CMD].startswith("ray start --head")


# ---- reconcile -----------------------------------------------------------------------------------
def as_live(pod: dict[str, Any], name: str, ready: bool = True) -> dict[str, Any]:
    live = copy.deepcopy(pod)
    live["metadata"]["name"] = name
    live["status"] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    return live


def live_cluster(rc: dict[str, Any], replicas: dict[str, int]) -> list[dict[str, Any]]:
    """A head and the given replica groups (name -> replica index), every host running."""
    group = rc["spec"]["workerGroupSpecs"][0]
    pods = [as_live(head_pod(rc), "h")]
    for replica, index in replicas.items():
        for host in range(int(group.get("numOfHosts") or 1)):
            pods.append(as_live(worker_pod(rc, group, replica, index, host), f"{replica}-h{host}"))
    return pods


def test_multi_host_scale_down_deletes_a_whole_replica_group() -> None:
    rc = operator_raycluster(hosts_per_group=2, replicas=1)
    pods = live_cluster(rc, {"decode-aaaaa": 0, "decode-bbbbb": 1})
    step = reconcile_pods(
        rc,
        pods,
        lambda g: "unused",
        victim_order=lambda victims: sorted(victims, key=lambda v: v.name, reverse=True),
    )
    assert not step.creates and step.error is None
    assert sorted(d.name for d in step.deletes) == ["decode-bbbbb-h0", "decode-bbbbb-h1"]


def test_workers_to_delete_takes_the_named_pods_whole_group_and_requeues() -> None:
    rc = operator_raycluster(hosts_per_group=2, replicas=1)
    rc["spec"]["workerGroupSpecs"][0]["scaleStrategy"] = {"workersToDelete": ["decode-aaaaa-h1"]}
    pods = live_cluster(rc, {"decode-aaaaa": 0, "decode-bbbbb": 1})
    step = reconcile_pods(rc, pods, lambda g: "unused")
    assert sorted(d.name for d in step.deletes) == ["decode-aaaaa-h0", "decode-aaaaa-h1"]
    assert step.error == "deleted 2 worker Pods based on ScaleStrategy, requeueing" and not step.creates
    # The next pass sees one complete group, as desired: nothing to do.
    rest = [p for p in pods if not p["metadata"]["name"].startswith("decode-aaaaa")]
    rc["spec"]["workerGroupSpecs"][0]["scaleStrategy"] = {}
    assert reconcile_pods(rc, rest, lambda g: "unused").deletes == []


def test_incomplete_replica_groups_are_deleted_whole_then_recreated_with_the_free_index() -> None:
    rc = operator_raycluster(hosts_per_group=2, replicas=2)
    pods = live_cluster(rc, {"decode-aaaaa": 0, "decode-bbbbb": 1})
    broken = [p for p in pods if p["metadata"]["name"] != "decode-aaaaa-h1"]
    step = reconcile_pods(rc, broken, lambda g: "unused")
    assert [d.name for d in step.deletes] == ["decode-aaaaa-h0"] and "incomplete" in (step.error or "")
    healthy = [p for p in broken if p["metadata"]["name"] != "decode-aaaaa-h0"]
    step = reconcile_pods(rc, healthy, lambda g: f"{g}-new01")
    made = [c.pod["metadata"]["labels"] for c in step.creates]
    assert [
        (m[K.RAY_WORKER_REPLICA_NAME_LABEL], m[K.RAY_WORKER_REPLICA_INDEX_LABEL], m[K.RAY_HOST_INDEX_LABEL])
        for m in made
    ] == [("decode-new01", "0", "0"), ("decode-new01", "0", "1")]


def test_single_host_workers_to_delete_and_list_order_scale_down() -> None:
    rc = operator_raycluster(hosts_per_group=1, replicas=1)
    second = as_live(worker_pod(rc, rc["spec"]["workerGroupSpecs"][0], "", 1, 0), "w-b")
    pods = [*live_cluster(rc, {"": 0}), second]
    pods[1]["metadata"]["name"] = "w-a"
    rc["spec"]["workerGroupSpecs"][0]["scaleStrategy"] = {"workersToDelete": ["w-b", "gone"]}
    step = reconcile_pods(rc, pods, lambda g: "unused")
    assert [d.name for d in step.deletes] == ["w-b"] and not step.creates and step.error is None
    rc["spec"]["workerGroupSpecs"][0]["scaleStrategy"] = {}
    pods[1]["metadata"]["creationTimestamp"] = "2026-01-01T00:00:02Z"
    second["metadata"]["creationTimestamp"] = "2026-01-01T00:00:01Z"
    # The runner's choice among KubeRay's arbitrary ones: the oldest pod goes.
    assert [d.name for d in reconcile_pods(rc, pods, lambda g: "unused").deletes] == ["w-b"]


def test_a_failed_worker_is_deleted_and_nothing_created_that_pass() -> None:
    rc = operator_raycluster(hosts_per_group=1, replicas=1)
    pods = live_cluster(rc, {"": 0})
    pods[1]["status"]["phase"] = "Failed"
    step = reconcile_pods(rc, pods, lambda g: "unused")
    assert [d.name for d in step.deletes] == [pods[1]["metadata"]["name"]] and not step.creates
    assert step.error == "delete 1 unhealthy worker Pods"


def test_missing_head_is_created_first() -> None:
    rc = operator_raycluster()
    step = reconcile_pods(rc, [], lambda g: "unused")
    kinds = [c.pod["metadata"]["labels"][K.RAY_NODE_TYPE_LABEL] for c in step.creates]
    assert kinds == ["head", "worker"] and step.creates[0].failure_reason == K.FAILED_CREATE_HEAD_POD


# ---- status --------------------------------------------------------------------------------------
def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_status_follows_kuberays_calculate_status() -> None:
    rc = operator_raycluster(hosts_per_group=2, replicas=2)
    pods = live_cluster(rc, {"decode-aaaaa": 0, "decode-bbbbb": 1})
    pods[-1]["status"]["conditions"][0]["status"] = "False"  # one host not ready yet
    status = calculate_status(rc, pods, [], None, "t0")
    assert status["readyWorkerReplicas"] == 3 and status["availableWorkerReplicas"] == 4
    # The operator's maxReplicas is KubeRay's default (2**31 - 1): times two hosts, clamped to int32.
    assert status["desiredWorkerReplicas"] == 4 and status["maxWorkerReplicas"] == 2**31 - 1
    assert conditions(status)[K.HEAD_POD_READY] == ("True", K.HEAD_POD_RUNNING_AND_READY)
    assert conditions(status)[K.RAY_CLUSTER_PROVISIONED] == ("False", K.RAY_CLUSTER_PODS_PROVISIONING)
    assert "state" not in status
    rc["status"] = status
    pods[-1]["status"]["conditions"][0]["status"] = "True"
    status = calculate_status(rc, pods, [], None, "t1")
    assert status["state"] == "ready"
    assert conditions(status)[K.RAY_CLUSTER_PROVISIONED] == ("True", K.ALL_POD_RUNNING_AND_READY_FIRST_TIME)
    # A failed pod creation reaches ReplicaFailure; Provisioned and state stay as they were.
    rc["status"] = status
    pods[0]["status"]["conditions"][0]["status"] = "False"
    error = ReconcileError("FailedCreateWorkerPod\nexceeded quota", K.FAILED_CREATE_WORKER_POD)
    status = calculate_status(rc, pods, [], error, "t2")
    assert conditions(status)[K.REPLICA_FAILURE] == ("True", K.FAILED_CREATE_WORKER_POD)
    assert conditions(status)[K.HEAD_POD_READY][0] == "False"
    assert conditions(status)[K.RAY_CLUSTER_PROVISIONED][0] == "True" and status["state"] == "ready"
    rc["status"] = status
    assert K.REPLICA_FAILURE not in conditions(calculate_status(rc, pods, [], None, "t3"))


def test_head_pod_ready_reason_comes_from_the_unready_container() -> None:
    rc = operator_raycluster()
    head = as_live(head_pod(rc), "h", ready=False)
    head["status"]["conditions"][0]["reason"] = "ContainersNotReady"
    head["status"]["containerStatuses"] = [
        {"name": "ray-head", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}}
    ]
    cond = next(
        c for c in calculate_status(rc, [head], [], None, "t")["conditions"] if c["type"] == K.HEAD_POD_READY
    )
    assert cond["status"] == "False" and cond["reason"] == "CrashLoopBackOff"
    assert cond["message"] == "ray-head: back-off 10s"
    assert conditions(calculate_status(rc, [], [], None, "t"))[K.HEAD_POD_READY] == (
        "False",
        K.HEAD_POD_NOT_FOUND,
    )
