"""Pure builders: spec -> manifests, table-driven over the example deployments, no cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from moeplane.api.enums import Role
from moeplane.api.hardware import HardwarePreset
from moeplane.api.layout import resolve_layout
from moeplane.api.spec import MoEDeployment, parse_deployment, parse_pool
from moeplane.operator import names
from moeplane.operator.builders.configmaps import (
    PLACEMENT_KEY,
    build_engine_configmap,
    build_placement_configmap,
)
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
    pool = build_pool(dep, name, "default", role, resolve_layout(dep.spec), dep.spec.pool(role).replicas)
    spec = parse_pool(pool).spec
    accelerator = HardwarePreset(pool["metadata"]["annotations"][names.ACCELERATOR])
    return pool, build_raycluster(spec, pool["metadata"]["name"], "default", accelerator, CONFIG)


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


def test_engine_config_leaves_out_sla_and_planner() -> None:
    def engine(dep: MoEDeployment) -> dict[str, Any]:
        return build_engine_configmap(dep, "deepseek-r1", "default", resolve_layout(dep.spec))

    base = engine(load("deepseek-r1.yaml"))
    assert engine(load("deepseek-r1.yaml", sla={"ttftMs": 1, "itlMs": 1})) == base
    assert engine(load("deepseek-r1.yaml", planner__intervalSeconds=5)) == base
    config = json.loads(base["data"]["engine.json"])
    assert config["pools"]["decode"]["nodesPerGroup"] == 18
    assert config["redisKeyPrefix"] == "moeplane:default/deepseek-r1:"


def test_initial_placement_matches_the_engine_identity_placement() -> None:
    torch = pytest.importorskip("torch")
    from moeplane.workers.placement import Placement

    dep = load("tiny-cpu.yaml")
    arch = dep.spec.model.resolve_arch()
    pool, _ = pool_and_cluster(dep, Role.PREFILL)
    spec = parse_pool(pool).spec
    cm = build_placement_configmap(
        spec, pool["metadata"]["name"], "default", {}, arch.num_moe_layers, arch.num_routed_experts
    )
    placement = json.loads(cm["data"][PLACEMENT_KEY])
    phy2log = torch.tensor([placement["phy2logRow"]] * placement["numLayers"])
    expected = Placement.identity(arch.num_moe_layers, arch.num_routed_experts, spec.layout.expert_slots)
    assert torch.equal(Placement.from_phy2log(phy2log, arch.num_routed_experts).phy2log, expected.phy2log)
    assert placement["numPhysicalSlots"] // placement["numRanks"] == placement["slotsPerRank"]


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
