"""The pods the operator describes: Pod Security "restricted" by default, the spec's pod-template
fields passed through, requests sized for /dev/shm, the model's locations mounted where the sidecar,
the ranks and the frontend all find them, the RDMA fabric, topology affinity and gang labels, and
the operator's image pull Secrets. Pure builders; manifests checked with kubernetes-validate."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from moeplane.api.enums import Role
from moeplane.api.locations import parse_location
from moeplane.api.runtime import resolve_runtime
from moeplane.api.spec import MoEDeployment, parse_deployment, parse_pool
from moeplane.operator import names
from moeplane.operator.builders.frontend import build_frontend_deployment
from moeplane.operator.builders.pools import build_pool
from moeplane.operator.builders.raycluster import (
    POOL_CONTAINER,
    WORKER_CONTAINER,
    build_raycluster,
)
from moeplane.operator.config import OperatorConfig

from tests.operator.pod_security import violations

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIG = OperatorConfig(redis_url="redis://redis:6379/0", image_pull_secrets=("chart-registry",))
Obj = dict[str, Any]


def manifest(example: str = "deepseek-r1.yaml", **spec: Any) -> Obj:
    doc = yaml.safe_load((EXAMPLES / example).read_text())
    for dotted, value in spec.items():
        node = doc["spec"]
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return doc


def pods(doc: Obj, role: Role = Role.DECODE, config: OperatorConfig = CONFIG) -> tuple[Obj, Obj, Obj, Obj]:
    """(RayCluster, head pod spec, worker pod spec, frontend pod spec) of one role."""
    dep: MoEDeployment = parse_deployment(doc)
    name = str(dep.metadata.name)
    layout = resolve_runtime(dep).pool(role)
    pool = build_pool(dep, name, "default", role, layout, dep.spec.pool(role).replicas)
    spec = parse_pool(pool).spec
    rc = build_raycluster(spec, pool["metadata"]["name"], "default", spec.layout.gpu, config)
    front = build_frontend_deployment(dep, name, "default", config)
    return (
        rc,
        rc["spec"]["headGroupSpec"]["template"]["spec"],
        rc["spec"]["workerGroupSpecs"][0]["template"]["spec"],
        front["spec"]["template"]["spec"],
    )


def container(pod: Obj, name: str) -> Obj:
    return next(c for c in [*pod["containers"], *pod.get("initContainers", [])] if c["name"] == name)


def env(c: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def mounts(c: Obj) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}


def test_the_checker_knows_the_restricted_controls() -> None:
    """The Pod Security checker itself: a pod breaking each control is reported for it."""
    bad = {
        "hostNetwork": True,
        "securityContext": {"runAsUser": 0},
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [
            {
                "name": "c",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {"privileged": True, "capabilities": {"add": ["IPC_LOCK"]}},
            }
        ],
    }
    found = " | ".join(violations(bad))
    for control in (
        "Host Namespaces", "HostPath Volumes", "Privileged Containers", "Capabilities", "Host Ports",
        "Volume Types", "Privilege Escalation", "Running as Non-root", "Running as Non-root user", "Seccomp",
    ):  # fmt: skip
        assert control in found, control
    assert violations({"containers": [{"name": "c"}]})  # nothing set is not restricted


@pytest.mark.parametrize("example", ["deepseek-r1.yaml", "tiny-cpu.yaml", "qwen3-235b.yaml"])
def test_frontend_and_pool_pods_pass_pod_security_restricted(example: str) -> None:
    _, head, worker, front = pods(manifest(example))
    assert violations(front) == []
    assert violations(head) == []  # the Ray head and the `moeplane pool` sidecar
    # RDMA workers (deepseek-r1 has a fabric) need IPC_LOCK, which only "privileged" admits.
    expected = [f"Capabilities: containers[{WORKER_CONTAINER}] adds ['IPC_LOCK']"]
    assert violations(worker) == (expected if "deepseek" in example else [])


def test_user_security_fields_merge_over_the_defaults() -> None:
    pod = {"securityContext": {"readOnlyRootFilesystem": True}, "podSecurityContext": {"runAsUser": 4242}}
    _, head, worker, _ = pods(manifest("tiny-cpu.yaml", decode__pod=pod))
    ctx = container(worker, WORKER_CONTAINER)["securityContext"]
    assert ctx == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    assert head["securityContext"]["runAsUser"] == 4242 and head["securityContext"]["runAsNonRoot"] is True
    assert violations(worker) == []


def test_pod_template_fields_pass_through() -> None:
    pod = {
        "imagePullSecrets": [{"name": "team-registry"}],
        "priorityClassName": "llm",
        "schedulerName": "my-scheduler",
        "env": [
            {"name": "NCCL_DEBUG", "value": "INFO"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}},
        ],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        "annotations": {"example.com/a": "1"},
        "labels": {"team": "llm"},
        "hostNetwork": True,
    }
    doc = manifest("qwen3-235b.yaml", decode__pod=pod, frontend={"pod": {k: v for k, v in pod.items()}})
    rc, head, worker, front = pods(doc)
    for where, spec in (("head", head), ("worker", worker), ("frontend", front)):
        assert spec["imagePullSecrets"] == [{"name": "chart-registry"}, {"name": "team-registry"}], where
        assert spec["priorityClassName"] == "llm" and spec["schedulerName"] == "my-scheduler", where
        assert {"name": "scratch", "emptyDir": {}} in spec["volumes"], where
        main = spec["containers"][0] if where != "head" else container(spec, POOL_CONTAINER)
        assert env(main)["NCCL_DEBUG"] == "INFO" and "secretKeyRef" in env(main)["HF_TOKEN"], where
        assert mounts(main)["/scratch"] == "scratch", where
    # Host networking is for the workers' fabric; the head stays on the pod network.
    assert worker["hostNetwork"] is True and worker["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "hostNetwork" not in head and front["hostNetwork"] is True
    meta = rc["spec"]["workerGroupSpecs"][0]["template"]["metadata"]
    assert meta["labels"]["team"] == "llm" and meta["labels"][names.POOL_LABEL] == "qwen3-235b-decode"
    assert meta["annotations"] == {"example.com/a": "1"}
    # The HF_TOKEN reaches the init container that fills the cache (gated repositories).
    fetch = container(worker, "hf-fetch-0")
    assert "secretKeyRef" in env(fetch)["HF_TOKEN"]


def test_worker_requests_are_sized_for_dev_shm() -> None:
    _, _, worker, _ = pods(manifest())  # 8 GPUs per pod, 64Gi /dev/shm
    resources = container(worker, WORKER_CONTAINER)["resources"]
    assert resources["requests"]["memory"] == f"{64 + 8 * 16}Gi" and resources["requests"]["cpu"] == "32"
    shm = next(v for v in worker["volumes"] if v["name"] == "dshm")["emptyDir"]
    assert shm == {"medium": "Memory", "sizeLimit": "64Gi"}
    _, _, worker, _ = pods(manifest("tiny-cpu.yaml"))  # 2 cpu ranks per pod, 2Gi /dev/shm
    assert container(worker, WORKER_CONTAINER)["resources"]["requests"] == {"cpu": "2", "memory": "6Gi"}
    doc = manifest(decode__pod={"shmSize": "200Gi"}, decode__resources={"limits": {"memory": "400Gi"}})
    _, _, worker, _ = pods(doc)
    resources = container(worker, WORKER_CONTAINER)["resources"]
    assert resources["requests"]["memory"] == "328Gi" and resources["limits"]["memory"] == "400Gi"
    assert resources["limits"]["nvidia.com/gpu"] == "8" == resources["requests"]["rdma/hca"]


@pytest.mark.parametrize(
    "weights,tokenizer",
    [
        ("pvc://model-weights/deepseek-ai/DeepSeek-R1", None),
        ("hf://deepseek-ai/DeepSeek-R1@v1", None),
        ("/models/deepseek-r1", "pvc://tokenizers/r1"),
        ("pvc://model-weights/r1", "hf://deepseek-ai/DeepSeek-R1"),
    ],
)
def test_model_locations_are_mounted_where_every_reader_sees_them(
    weights: str, tokenizer: str | None
) -> None:
    doc = manifest(model__weights__uri=weights, model__hfCache={"claimName": "hf-cache"})
    if tokenizer:
        doc["spec"]["model"]["tokenizer"] = tokenizer
    _, head, worker, front = pods(doc)
    readers = {
        POOL_CONTAINER: (head, container(head, POOL_CONTAINER)),
        WORKER_CONTAINER: (worker, container(worker, WORKER_CONTAINER)),
        "frontend": (front, front["containers"][0]),
    }
    for uri, who in ((weights, (POOL_CONTAINER, WORKER_CONTAINER)), (tokenizer, tuple(readers))):
        if uri is None:
            continue
        loc = parse_location(uri)
        for name in who:
            spec, c = readers[name]
            e, m = env(c), mounts(c)
            assert e["MOEPLANE_VOLUME_ROOT"] == "/mnt/moeplane"
            volumes = {v["name"]: v for v in spec["volumes"]}
            if loc.kind.value == "pvc":
                # The path the reader resolves is under a read-only mount of that claim.
                path = str(loc.local_path(e))
                mount = max((p for p in m if path.startswith(p)), key=len)
                assert volumes[m[mount]]["persistentVolumeClaim"] == {
                    "claimName": loc.claim,
                    "readOnly": True,
                }
                assert next(x for x in c["volumeMounts"] if x["mountPath"] == mount)["readOnly"] is True
            elif loc.kind.value == "hf":
                assert e["HF_HOME"] == "/mnt/moeplane/hf" and e["HF_HUB_OFFLINE"] == "1", name
                assert volumes[m["/mnt/moeplane/hf"]]["persistentVolumeClaim"] == {"claimName": "hf-cache"}
                fetches = [c for c in spec["initContainers"] if uri in c["command"]]
                assert len(fetches) == 1, name
                light = "--light" in fetches[0]["command"]
                # Workers fetch the weights in full; the sidecar and the frontend only what they read.
                assert light == (name != WORKER_CONTAINER or uri == tokenizer), name
                assert fetches[0]["command"][:4] == ["python", "-m", "moeplane.hfcache", "fetch"]
                assert {"name": "hf-cache", "mountPath": "/mnt/moeplane/hf"} in fetches[0]["volumeMounts"]
            else:
                assert not spec.get("initContainers"), name


def test_a_local_path_mounts_nothing_and_an_emptydir_cache_by_default() -> None:
    _, head, worker, front = pods(manifest(model__weights__uri="/models/r1"))
    for spec in (head, worker, front):
        assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
        assert "initContainers" not in spec
    _, _, worker, _ = pods(manifest(model__weights__uri="hf://org/repo", model__hfCache={"sizeLimit": "2Ti"}))
    cache = next(v for v in worker["volumes"] if v["name"] == "hf-cache")
    assert cache == {"name": "hf-cache", "emptyDir": {"sizeLimit": "2Ti"}}


def test_rdma_fabric_reaches_the_workers() -> None:
    rdma = {
        "resourceName": "rdma/ib",
        "hcas": ["mlx5_0", "mlx5_3"],
        "gidIndex": 3,
        "socketInterface": "bond0",
        "networks": ["default/ib-net", "ib-net-2"],
    }
    rc, head, worker, _ = pods(manifest(hardware__rdma=rdma))
    main = container(worker, WORKER_CONTAINER)
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    assert main["resources"]["limits"]["rdma/ib"] == "8" == main["resources"]["requests"]["rdma/ib"]
    assert {k: v for k, v in env(main).items() if k.startswith(("NCCL", "GLOO", "UCX"))} == {
        "NCCL_IB_HCA": "mlx5_0,mlx5_3",
        "UCX_NET_DEVICES": "mlx5_0:1,mlx5_3:1",
        "NCCL_IB_GID_INDEX": "3",
        "NCCL_SOCKET_IFNAME": "bond0",
        "GLOO_SOCKET_IFNAME": "bond0",
    }
    meta = rc["spec"]["workerGroupSpecs"][0]["template"]["metadata"]
    assert meta["annotations"] == {"k8s.v1.cni.cncf.io/networks": "default/ib-net,ib-net-2"}
    # The head runs no rank: no fabric there.
    assert "IPC_LOCK" not in str(head) and "rdma/ib" not in str(head)


def test_topology_key_keeps_each_groups_hosts_in_one_domain() -> None:
    user_affinity = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    }
    doc = manifest(decode__topologyKey="nvidia.com/gpu.clique", decode__affinity=user_affinity)
    _, _, worker, _ = pods(doc)
    affinity = worker["affinity"]
    assert affinity["nodeAffinity"] == user_affinity["nodeAffinity"]
    (term,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {
        "labelSelector": {"matchLabels": {names.POOL_LABEL: "deepseek-r1-decode"}},
        "matchLabelKeys": ["ray.io/worker-group-replica-name"],
        "topologyKey": "nvidia.com/gpu.clique",
    }
    # One host per group: nothing to keep together.
    _, _, worker, _ = pods(manifest("tiny-cpu.yaml", decode__topologyKey="rack"))
    assert "affinity" not in worker


def test_gang_scheduling_labels_for_kuberays_batch_scheduler_and_kueue() -> None:
    volcano = {"schedulerName": "volcano", "queue": "llm", "priorityClassName": "serving"}
    rc, _, worker, _ = pods(manifest(decode__pod=volcano))
    labels = rc["metadata"]["labels"]
    assert labels["volcano.sh/queue-name"] == "llm" and labels["ray.io/priority-class-name"] == "serving"
    assert worker["schedulerName"] == "volcano" and "kueue.x-k8s.io/queue-name" not in labels
    rc, _, worker, _ = pods(manifest(decode__pod={"queue": "team-a"}))
    assert rc["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "schedulerName" not in worker
    rc, _, _, _ = pods(manifest())
    assert not {k for k in rc["metadata"]["labels"] if "queue" in k}


def test_operator_pull_secrets_reach_every_pod() -> None:
    _, head, worker, front = pods(manifest("tiny-cpu.yaml"))
    for spec in (head, worker, front):
        assert spec["imagePullSecrets"] == [{"name": "chart-registry"}]
    _, head, worker, front = pods(manifest("tiny-cpu.yaml"), config=OperatorConfig())
    assert not any("imagePullSecrets" in spec for spec in (head, worker, front))


def _as_pod(spec: Obj) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": copy.deepcopy(spec)}


@pytest.mark.parametrize("version", ["1.31.0", "1.37.0"])
def test_pod_templates_with_every_field_pass_kubernetes_validate(version: str) -> None:
    doc = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "tests" / "api" / "full_manifest.yaml").read_text()
    )
    _, head, worker, front = pods(doc)
    for spec in (head, worker, front):
        kubernetes_validate.validate(_as_pod(spec), version, strict=True)
