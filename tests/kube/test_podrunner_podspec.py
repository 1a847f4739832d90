"""The pod runner's kubelet rules (pure): env resolution, volumes, path rewriting, DNS, the Deployment
and Job controllers, image command rules."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.kube.podrunner import dns
from tests.kube.podrunner.images import Image
from tests.kube.podrunner.podspec import (
    ConfigError,
    MountError,
    PathMap,
    Unschedulable,
    expand,
    materialise_volume,
    resolve_env,
)
from tests.kube.podrunner.workloads import TEMPLATE_HASH, reconcile_deployment, reconcile_job, template_hash

pytestmark = pytest.mark.unit


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


OBJECTS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("Secret", "ns", "creds"): {"data": {"token": b64("s3cret"), "url": b64("redis://r:6379")}},
    ("ConfigMap", "ns", "cfg"): {"data": {"mode": "fast", "bad key": "x", "engine.json": "{}"}},
    ("PersistentVolumeClaim", "ns", "ckpt"): {"metadata": {"name": "ckpt"}},
}


def lookup(kind: str, ns: str, name: str) -> dict[str, Any] | None:
    return OBJECTS.get((kind, ns, name))


POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
    "spec": {"nodeName": "node-a"},
    "status": {"podIP": "127.9.1.1", "hostIP": "127.9.0.1"},
}


def test_env_resolution_follows_the_kubelet() -> None:
    container = {
        "envFrom": [
            {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
            {"secretRef": {"name": "nope", "optional": True}},
        ],
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "GREETING", "value": "token=$(TOKEN) ip=$(POD_IP) $$(TOKEN) $(UNSET)"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "LATER", "value": "$(POD_IP)"},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
            {
                "name": "OPT",
                "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "missing", "optional": True}},
            },
        ],
        "resources": {"limits": {"cpu": "1500m"}},
    }
    env = resolve_env(POD, container, lookup)
    assert env["CFG_mode"] == "fast" and "CFG_bad key" not in env  # not a valid variable name
    assert env["TOKEN"] == "s3cret"
    # $(VAR) sees only what was defined before it; $$ escapes; unknown references stay as written.
    assert env["GREETING"] == "token=s3cret ip=$(POD_IP) $(TOKEN) $(UNSET)"
    assert env["LATER"] == "127.9.1.1" and env["APP"] == "x" and env["CPU"] == "1500"
    assert "OPT" not in env
    assert expand("$(A)-$$(A)", {"A": "1"}) == "1-$(A)"


def test_missing_references_are_create_container_config_errors() -> None:
    with pytest.raises(ConfigError, match='secret "gone" not found'):
        resolve_env(
            POD, {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]}, lookup
        )
    with pytest.raises(ConfigError, match="couldn't find key nokey in Secret ns/creds"):
        resolve_env(
            POD,
            {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nokey"}}}]},
            lookup,
        )


def test_volumes_are_materialised(tmp_path: Path) -> None:
    cm = materialise_volume(
        POD,
        {"name": "e", "configMap": {"name": "cfg", "items": [{"key": "engine.json", "path": "sub/e.json"}]}},
        tmp_path / "e",
        lookup,
        {},
    )
    assert (cm / "sub" / "e.json").read_text() == "{}" and not (cm / "mode").exists()
    secret = materialise_volume(
        POD, {"name": "s", "secret": {"secretName": "creds"}}, tmp_path / "s", lookup, {}
    )
    assert (secret / "token").read_text() == "s3cret"
    with pytest.raises(MountError, match='configmap "absent" not found'):
        materialise_volume(POD, {"name": "x", "configMap": {"name": "absent"}}, tmp_path / "x", lookup, {})
    with pytest.raises(MountError, match="non-existent config key: nokey"):
        materialise_volume(
            POD,
            {"name": "x", "configMap": {"name": "cfg", "items": [{"key": "nokey", "path": "k"}]}},
            tmp_path / "x",
            lookup,
            {},
        )
    claim = {"name": "c", "persistentVolumeClaim": {"claimName": "ckpt"}}
    with pytest.raises(Unschedulable, match="unbound"):
        materialise_volume(POD, claim, tmp_path / "c", lookup, {})
    assert materialise_volume(POD, claim, tmp_path / "c", lookup, {("ns", "ckpt"): tmp_path / "disk"}) == (
        tmp_path / "disk"
    )
    down = materialise_volume(
        POD,
        {
            "name": "d",
            "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]},
        },
        tmp_path / "d",
        lookup,
        {},
    )
    assert (down / "name").read_text() == "p"


def test_paths_under_and_above_mounts_are_rewritten_others_kept(tmp_path: Path) -> None:
    view = tmp_path / "view"
    paths = PathMap(
        view,
        [
            ("/etc/moeplane/engine", tmp_path / "engine"),
            ("/mnt/moeplane/pvc/ckpt", tmp_path / "disk"),
            ("/tmp/ray", tmp_path / "raytmp"),
            ("/dev/shm", tmp_path / "shm"),
        ],
    )
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "engine.json").write_text("{}")
    paths.build()
    assert paths.rewrite("/etc/moeplane/engine/engine.json") == f"{view}/etc/moeplane/engine/engine.json"
    assert Path(paths.rewrite("/etc/moeplane/engine/engine.json")).read_text() == "{}"
    # A parent of a mount that this machine does not have is the view's (MOEPLANE_VOLUME_ROOT).
    assert paths.rewrite("/mnt/moeplane") == f"{view}/mnt/moeplane"
    assert paths.rewrite("--config=/etc/moeplane/engine/x --log /var/log/y") == (
        f"--config={view}/etc/moeplane/engine/x --log /var/log/y"
    )
    assert paths.rewrite("/etc/hosts") == "/etc/hosts" and paths.rewrite("/etc") == "/etc"
    # Mounts under /tmp and /dev/shm are bind-mounted into the container's own mount namespace.
    assert paths.rewrite("/tmp/ray/session_latest") == "/tmp/ray/session_latest"
    assert [dst for _, dst in paths.binds] == ["/tmp/ray", "/dev/shm"]


def test_images_follow_the_entrypoint_and_cmd_rules() -> None:
    image = Image(entrypoint=("moeplane",), cmd=("--help",))
    assert image.command(None, None) == ["moeplane", "--help"]
    assert image.command(None, ["pool", "--host", "0.0.0.0"]) == ["moeplane", "pool", "--host", "0.0.0.0"]
    assert image.command(["/bin/bash", "-c", "--"], ["ray start"]) == ["/bin/bash", "-c", "--", "ray start"]
    assert image.command(["sleep"], None) == ["sleep"]


def pod(name: str, labels: dict[str, str], ip: str, ready: bool, ns: str = "ns") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_dns_records_for_headless_and_cluster_ip_services() -> None:
    pods = [pod("a", {"app": "x"}, "127.9.1.1", True), pod("b", {"app": "x"}, "127.9.1.2", False)]
    headless = {
        "metadata": {"name": "h", "namespace": "ns"},
        "spec": {"clusterIP": "None", "selector": {"app": "x"}, "publishNotReadyAddresses": True},
    }
    ready_only = {
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {"clusterIP": "None", "selector": {"app": "x"}},
    }
    cluster_ip = {
        "metadata": {"name": "c", "namespace": "ns"},
        "spec": {"selector": {"app": "x"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    records = set(dns.records([headless, ready_only, cluster_ip], pods))
    assert {ip for name, ip in records if name == "h.ns.svc.cluster.local"} == {"127.9.1.1", "127.9.1.2"}
    assert {ip for name, ip in records if name == "r.ns.svc.cluster.local"} == {"127.9.1.1"}
    assert {ip for name, ip in records if name == "c.ns.svc.cluster.local"} == {"127.9.1.1"}
    assert ("a", "127.9.1.1") in records and ("b", "127.9.1.2") in records
    assert dns.port_mismatches([cluster_ip], pods) == ["Service ns/c port 80 -> 8080"]


def deployment(replicas: int, image: str, strategy: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "ns", "uid": "d1", "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "w"}},
            "strategy": strategy or {},
            "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"image": image}]}},
        },
    }


def owned_pod(
    name: str, owner: dict[str, Any], hash_: str, ready: bool, created: str = "t1"
) -> dict[str, Any]:
    p = pod(name, {"app": "w", TEMPLATE_HASH: hash_}, "127.9.1.9", ready)
    p["metadata"]["ownerReferences"] = [{"uid": owner["metadata"]["uid"]}]
    p["metadata"]["creationTimestamp"] = created
    return p


def test_deployment_rolls_with_surge_and_keeps_availability() -> None:
    old = deployment(2, "img:1")
    old_hash = template_hash(old["spec"]["template"])
    new = deployment(2, "img:2")
    pods = [owned_pod("o1", new, old_hash, True), owned_pod("o2", new, old_hash, True)]
    step = reconcile_deployment(new, pods)
    # maxSurge 25% of 2 -> 1 new pod; maxUnavailable 25% of 2 -> 0: no old pod goes yet.
    assert len(step.create) == 1 and step.delete == []
    assert step.create[0]["metadata"]["labels"][TEMPLATE_HASH] == template_hash(new["spec"]["template"])
    new_pod = owned_pod("n1", new, template_hash(new["spec"]["template"]), True, "t2")
    step = reconcile_deployment(new, [*pods, new_pod])
    assert len(step.delete) == 1 and step.create == []
    recreate = reconcile_deployment(deployment(2, "img:2", {"type": "Recreate"}), pods)
    assert sorted(recreate.delete) == ["o1", "o2"] and recreate.create == []


def test_job_runs_to_completion_or_backoff_limit() -> None:
    job = {
        "metadata": {"name": "hook", "namespace": "ns", "uid": "j1"},
        "spec": {"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never", "containers": [{}]}}},
    }
    assert len(reconcile_job(job, [], "t").create) == 1
    done = owned_pod("hook-a", job, "", False)
    done["status"]["phase"] = "Succeeded"
    status = reconcile_job(job, [done], "t").status
    assert status is not None and {c["type"] for c in status["conditions"]} >= {"Complete"}
    failed = [owned_pod(f"hook-{i}", job, "", False) for i in range(2)]
    for p in failed:
        p["status"]["phase"] = "Failed"
    status = reconcile_job(job, failed, "t").status
    assert status is not None
    assert any(c["type"] == "Failed" and c["reason"] == "BackoffLimitExceeded" for c in status["conditions"])
