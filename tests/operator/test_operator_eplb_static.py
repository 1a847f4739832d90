"""Static EPLB in Kubernetes: a `configmap://NAME/KEY` load file is mounted (that key only,
read-only) into the pool's head sidecar and worker pods, and its in-pod path reaches `moeplane pool`
as MOEPLANE_EPLB_LOAD_FILE. Pure builders (the pod templates pass kubernetes-validate), then the
operator against the emulated API server: it never reads the ConfigMap, so it needs no new RBAC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from moeplane.api.enums import Role
from moeplane.api.podcontract import EPLB_LOAD_FILE_ENV as EPLB_LOAD_ENV
from moeplane.api.runtime import resolve_runtime
from moeplane.api.spec import MoEDeployment, parse_deployment, parse_pool
from moeplane.operator import names
from moeplane.operator.builders.pools import build_pool
from moeplane.operator.builders.raycluster import (
    EPLB_LOAD_DIR,
    EPLB_LOAD_VOLUME,
    HEAD_CONTAINER,
    POOL_CONTAINER,
    WORKER_CONTAINER,
    build_raycluster,
)
from moeplane.operator.config import OperatorConfig

from tests.kube.cluster import EmulatedCluster
from tests.kube.kuberay import KubeRayDriver

unit = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIG = OperatorConfig(redis_url="redis://moeplane-redis.moeplane:6379/0")
KUBE_VERSIONS = ("1.29.0", "1.37.0")  # as the chart's render tests
REF = "configmap://r1-expert-load/decode-load.json"


def deployment(example: str = "deepseek-r1.yaml", **eplb: Any) -> MoEDeployment:
    raw = yaml.safe_load((EXAMPLES / example).read_text())
    raw["spec"]["eplb"] = {**raw["spec"].get("eplb", {}), **eplb}
    return parse_deployment(raw)


def raycluster(dep: MoEDeployment, role: Role = Role.DECODE) -> dict[str, Any]:
    name = str(dep.metadata.name)
    layout = resolve_runtime(dep).pool(role)
    pool = build_pool(dep, name, "default", role, layout, dep.spec.pool(role).replicas)
    spec = parse_pool(pool).spec
    return build_raycluster(spec, pool["metadata"]["name"], "default", spec.layout.gpu, CONFIG)


def pods(rc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = rc["spec"]
    return {"head": spec["headGroupSpec"]["template"], "worker": spec["workerGroupSpecs"][0]["template"]}


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def mounts(c: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in c.get("volumeMounts", []) if m["name"] == EPLB_LOAD_VOLUME]


def load_volumes(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in pod["spec"]["volumes"] if v["name"] == EPLB_LOAD_VOLUME]


def pool_env(rc: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container(pods(rc)["head"], POOL_CONTAINER)["env"]}


@unit
@pytest.mark.parametrize("role", list(Role))
def test_a_configmap_load_file_is_mounted_into_head_and_worker_pods(role: Role) -> None:
    rc = raycluster(deployment(mode="static", loadFile=REF), role)
    want_volume = {
        "name": EPLB_LOAD_VOLUME,
        "configMap": {
            "name": "r1-expert-load",
            "items": [{"key": "decode-load.json", "path": "decode-load.json"}],
        },
    }
    want_mount = [{"name": EPLB_LOAD_VOLUME, "mountPath": EPLB_LOAD_DIR, "readOnly": True}]
    head, worker = pods(rc)["head"], pods(rc)["worker"]
    assert load_volumes(head) == load_volumes(worker) == [want_volume]
    assert mounts(container(head, POOL_CONTAINER)) == want_mount  # `moeplane pool` reads it
    assert mounts(container(worker, WORKER_CONTAINER)) == want_mount
    assert mounts(container(head, HEAD_CONTAINER)) == []  # the Ray head process never reads it
    assert pool_env(rc)[EPLB_LOAD_ENV] == f"{EPLB_LOAD_DIR}/decode-load.json"


@unit
def test_a_path_load_file_is_passed_as_it_is_and_mounts_nothing() -> None:
    rc = raycluster(deployment(mode="static", loadFile="/models/r1/expert-load.pt"))
    assert pool_env(rc)[EPLB_LOAD_ENV] == "/models/r1/expert-load.pt"
    for pod in pods(rc).values():
        assert load_volumes(pod) == []
        assert all(mounts(c) == [] for c in pod["spec"]["containers"])


@unit
@pytest.mark.parametrize("mode", ["online", "off"])
def test_other_modes_get_no_load_file_even_when_one_is_set(mode: str) -> None:
    rc = raycluster(deployment(mode=mode, loadFile=REF))
    assert EPLB_LOAD_ENV not in pool_env(rc)
    assert all(load_volumes(pod) == [] for pod in pods(rc).values())


@unit
def test_the_revision_follows_the_load_file_but_not_the_other_eplb_settings() -> None:
    def revision(dep: MoEDeployment) -> str:
        return str(raycluster(dep)["metadata"]["labels"][names.REVISION_LABEL])

    online = revision(deployment(mode="online"))
    assert revision(deployment(mode="off")) == online
    assert revision(deployment(mode="online", balancednessThreshold=0.5, loadFile=REF)) == online
    static = revision(deployment(mode="static", loadFile=REF))
    assert static != online  # the pool starts on another placement: the workers restart
    assert revision(deployment(mode="static", loadFile=REF, balancednessThreshold=0.5)) == static
    # A new ConfigMap (or key) rolls the pool; editing the same one's content does not.
    for other in ("configmap://r1-expert-load-v2/decode-load.json", "configmap://r1-expert-load/other.json"):
        assert revision(deployment(mode="static", loadFile=other)) != static


@unit
@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("example", ["deepseek-r1.yaml", "tiny-cpu.yaml"])
def test_pod_templates_with_the_mount_pass_kubernetes_validate(example: str, version: str) -> None:
    rc = raycluster(deployment(example, mode="static", loadFile=REF))
    for kind, template in pods(rc).items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"x-{kind}", **template["metadata"]},
               "spec": template["spec"]}
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{kind} pod fails Kubernetes {version} at {list(err.path)}: {err.message}")


@pytest.mark.integration
def test_the_operator_mounts_a_configmap_it_never_reads(
    kube_crds: EmulatedCluster, kuberay: KubeRayDriver, start_operator: Any
) -> None:
    cluster = kube_crds
    body = yaml.safe_load((EXAMPLES / "deepseek-r1.yaml").read_text())
    body["metadata"]["name"] = "r1-static"
    body["spec"]["eplb"] = {"mode": "static", "loadFile": REF}
    with start_operator():
        # Through the CRD's schema and CEL rules, as a user would apply it; no such ConfigMap exists.
        cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        cluster.wait_for(lambda: len(kuberay.rayclusters("default")) == 2, what="two RayClusters")
        pool = cluster.get("moeplane.io/v1alpha1", "MoEPool", "r1-static-decode")
        assert pool["spec"]["eplbLoadFile"] == REF
        clusters = kuberay.rayclusters("default")
        [decode] = [rc for rc in clusters if rc["metadata"]["labels"][names.ROLE_LABEL] == "decode"]
        for template in pods(decode).values():
            assert load_volumes(template)[0]["configMap"]["name"] == "r1-expert-load"
        assert pool_env(decode)[EPLB_LOAD_ENV] == f"{EPLB_LOAD_DIR}/decode-load.json"
    # A missing ConfigMap is the kubelet's to report (pods in ContainerCreating), not the operator's.
    assert cluster.find("v1", "ConfigMap", "r1-expert-load") is None
    touched = [c for c in cluster.calls("operator") if c.name == "r1-expert-load"]
    assert touched == []
