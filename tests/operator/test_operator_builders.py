"""Pure builders: spec -> manifests, table-driven over the example deployments, no cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from moeplane.api.enums import Role
from moeplane.api.hardware import HardwarePreset
from moeplane.api.runtime import EngineDocument, resolve_runtime
from moeplane.api.runtime_io import parse_engine_document
from moeplane.api.spec import MoEDeployment, parse_deployment, parse_pool
from moeplane.operator import names
from moeplane.operator.builders.configmaps import ENGINE_KEY, build_engine_configmap
from moeplane.operator.builders.frontend import (
    build_frontend_deployment,
    build_frontend_service,
    build_worker_service,
)
from moeplane.operator.builders.pools import build_pool, desired_pool_replicas
from moeplane.operator.builders.raycluster import build_raycluster
from moeplane.operator.config import OperatorConfig

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIG = OperatorConfig()


def load(name: str, **spec_changes: Any) -> MoEDeployment:
    raw = yaml.safe_load((EXAMPLES / name).read_text())
    for path, value in spec_changes.items():
        node = raw["spec"]
        *parents, last = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return parse_deployment(raw)


def pool_and_cluster(dep: MoEDeployment, role: Role) -> tuple[dict[str, Any], dict[str, Any]]:
    name = str(dep.metadata.name)
    layout = resolve_runtime(dep).pool(role)
    pool = build_pool(dep, name, "default", role, layout, dep.spec.pool(role).replicas)
    spec = parse_pool(pool).spec
    return pool, build_raycluster(spec, pool["metadata"]["name"], "default", spec.layout.gpu, CONFIG)


# example, role, hosts per group, accelerators per pod, RDMA resource
CASES = [
    ("deepseek-r1.yaml", Role.PREFILL, 4, 8, "rdma/hca"),
    ("deepseek-r1.yaml", Role.DECODE, 18, 8, "rdma/hca"),
    ("tiny-cpu.yaml", Role.DECODE, 1, 2, None),
]


@pytest.mark.parametrize("example,role,hosts,per_pod,rdma", CASES)
def test_raycluster_layout(example: str, role: Role, hosts: int, per_pod: int, rdma: str | None) -> None:
    dep = load(example)
    pool, rc = pool_and_cluster(dep, role)
    spec = rc["spec"]
    group = spec["workerGroupSpecs"]
    assert len(group) == 1 and spec["enableInTreeAutoscaling"] is False
    group = group[0]
    assert group["numOfHosts"] == hosts and group["replicas"] == dep.spec.pool(role).replicas
    pod = group["template"]["spec"]
    container = pod["containers"][0]
    resources = container["resources"]
    if dep.spec.hardware.gpu is HardwarePreset.CPU:
        assert "nvidia.com/gpu" not in json.dumps(resources)
        assert group["rayStartParams"] == {"num-cpus": str(per_pod)}
    else:
        assert (
            resources["limits"]["nvidia.com/gpu"] == str(per_pod) == resources["requests"]["nvidia.com/gpu"]
        )
        assert group["rayStartParams"] == {"num-gpus": str(per_pod)}
        assert pod["tolerations"] == dep.spec.pool(role).tolerations
    if rdma:
        assert resources["limits"][rdma] == str(per_pod)
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert rc["metadata"]["labels"][names.POOL_LABEL] == names.label_value(pool["metadata"]["name"])
    assert pool["spec"]["layout"]["nodesPerGroup"] == hosts
    assert pool["spec"]["layout"]["gpu"] == dep.spec.hardware.gpu.value  # no annotation to fall back from
    assert "moeplane.io/accelerator" not in pool["metadata"]["annotations"]


def test_revision_ignores_replicas_sla_and_planner_but_not_layout_or_image() -> None:
    base = pool_and_cluster(load("deepseek-r1.yaml"), Role.DECODE)[1]["metadata"]["name"]
    same = [
        load("deepseek-r1.yaml", decode__replicas=3, decode__maxReplicas=4),
        load("deepseek-r1.yaml", sla={"ttftMs": 500, "itlMs": 20, "percentile": 99}),
        load("deepseek-r1.yaml", planner__enabled=False, planner__predictor="kalman"),
    ]
    for dep in same:
        assert pool_and_cluster(dep, Role.DECODE)[1]["metadata"]["name"] == base
    changed = [
        load("deepseek-r1.yaml", image="registry.example/moeplane:2"),
        load("deepseek-r1.yaml", decode__expertParallel=72, decode__redundantExperts=32),
    ]
    for dep in changed:
        assert pool_and_cluster(dep, Role.DECODE)[1]["metadata"]["name"] != base


def test_engine_config_is_the_runtime_document_without_sla_planner_or_layouts() -> None:
    def engine(dep: MoEDeployment) -> dict[str, Any]:
        return build_engine_configmap(resolve_runtime(dep))

    base = engine(load("deepseek-r1.yaml"))
    assert engine(load("deepseek-r1.yaml", sla={"ttftMs": 1, "itlMs": 1})) == base
    assert engine(load("deepseek-r1.yaml", planner__intervalSeconds=5)) == base
    # Scaling never touches the document; a layout change does not either: it is the MoEPool's.
    assert engine(load("deepseek-r1.yaml", decode__replicas=3, decode__maxReplicas=4)) == base
    assert engine(load("deepseek-r1.yaml", decode__expertParallel=72)) == base
    assert engine(load("deepseek-r1.yaml", serving={"maxNumSeqs": 128})) != base
    wire = json.loads(base["data"][ENGINE_KEY])
    doc = parse_engine_document(wire, "engine.json")
    assert isinstance(doc, EngineDocument) and doc.pools == {}
    assert doc == resolve_runtime(load("deepseek-r1.yaml")).without_pools()
    assert (wire["kind"], wire["deployment"]) == ("EngineDocument", "deepseek-r1")
    assert wire["namespace"] == "default"
    assert wire["model"]["servedModelName"] == "deepseek-r1"
    assert wire["model"]["tokenizer"] == "hf://deepseek-ai/DeepSeek-R1"  # the weights'
    assert wire["serving"]["maxModelLen"] == 163840 and wire["serving"]["blockSizeTokens"] == 16
    assert wire["kvTransfer"] == {"backend": "grpc", "chunkBytes": 1048576, "leaseSeconds": 30.0}


def test_services_select_the_pods_they_serve() -> None:
    dep = load("deepseek-r1.yaml")
    pool, rc = pool_and_cluster(dep, Role.DECODE)
    svc = build_worker_service("deepseek-r1", pool["metadata"]["name"], "default", Role.DECODE)
    assert svc["spec"]["clusterIP"] == "None"
    # Every worker service listens on an ephemeral port advertised in Redis: no fixed port is real.
    assert "ports" not in svc["spec"]
    worker_labels = {
        **rc["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"],
        names.RAY_NODE_TYPE: "worker",
    }  # KubeRay adds the node type
    assert svc["spec"]["selector"].items() <= worker_labels.items()
    front = build_frontend_deployment(dep, "deepseek-r1", "default", CONFIG)
    front_svc = build_frontend_service("deepseek-r1", "default", CONFIG)
    pod_labels = front["spec"]["template"]["metadata"]["labels"]
    assert front["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert front_svc["spec"]["selector"].items() <= pod_labels.items()


def test_pool_replicas_follow_scale_until_the_deployment_changes() -> None:
    dep = load("deepseek-r1.yaml")
    pool, _ = pool_and_cluster(dep, Role.DECODE)
    assert desired_pool_replicas(1, None) == 1
    scaled = {**pool, "spec": {**pool["spec"], "replicas": 3}}
    assert desired_pool_replicas(1, scaled) == 3  # a resync never undoes `kubectl scale`
    assert desired_pool_replicas(2, scaled) == 2  # editing the deployment's replicas still wins
