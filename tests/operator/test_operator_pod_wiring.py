"""What the operator's pods run: the `moeplane pool` sidecar on each Ray head, the frontend, the
env vars they read, and the per-deployment Secret that keeps the gRPC token and Redis URL out of
every pod spec. Pure builders and the real `moeplane` CLI parser; no cluster."""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from moeplane.api import podcontract
from moeplane.api.enums import Role
from moeplane.api.runtime import resolve_runtime
from moeplane.api.spec import MoEDeployment, parse_deployment, parse_pool
from moeplane.operator import names
from moeplane.operator.builders.frontend import build_frontend_deployment
from moeplane.operator.builders.pools import build_pool
from moeplane.operator.builders.raycluster import (
    HEAD_CONTAINER,
    POOL_CONTAINER,
    RAY_TMP_DIR,
    WORKER_CONTAINER,
    build_raycluster,
)
from moeplane.operator.builders.secret import (
    GRPC_TOKEN_KEY,
    REDIS_URL_KEY,
    build_deployment_secret,
    new_grpc_token,
    secret_patch,
)
from moeplane.operator.config import OperatorConfig
from moeplane.operator.diffing import with_hash
from moeplane.operator.kinds import SECRET
from moeplane.operator.names import DESIRED_HASH
from moeplane.operator.reconcile import SECRET_UNHASHED

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PASSWORD = "s3cr3t-redis-pw"
CONFIG = OperatorConfig(redis_url=f"redis://:{PASSWORD}@moeplane-redis.moeplane:6379/0")


def deployment(example: str = "deepseek-r1.yaml") -> MoEDeployment:
    return parse_deployment(yaml.safe_load((EXAMPLES / example).read_text()))


def raycluster(dep: MoEDeployment, role: Role, config: OperatorConfig = CONFIG) -> dict[str, Any]:
    name = str(dep.metadata.name)
    layout = resolve_runtime(dep).pool(role)
    pool = build_pool(dep, name, "default", role, layout, dep.spec.pool(role).replicas)
    spec = parse_pool(pool).spec
    return build_raycluster(spec, pool["metadata"]["name"], "default", spec.layout.gpu, config)


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def parse_with_moeplane_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    from moeplane.cli import build_parser

    try:
        return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`moeplane {' '.join(args)}` is refused: {capsys.readouterr().err}")


@pytest.mark.parametrize("example,role", [("deepseek-r1.yaml", Role.DECODE), ("tiny-cpu.yaml", Role.PREFILL)])
def test_head_runs_moeplane_pool_beside_ray_sharing_tmp_ray(
    example: str, role: Role, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = raycluster(deployment(example), role)
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]
    # KubeRay makes the first container the Ray head; the sidecar must not be it.
    assert [c["name"] for c in head["containers"]] == [HEAD_CONTAINER, POOL_CONTAINER]
    sidecar = container(head, POOL_CONTAINER)
    parsed = parse_with_moeplane_cli(sidecar["args"], capsys)
    assert parsed.command == "pool" and parsed.host == "0.0.0.0" and parsed.ray_address == "auto"

    ray_tmp = next(v for v in head["volumes"] if v["name"] == "ray-tmp")
    assert ray_tmp == {"name": "ray-tmp", "emptyDir": {}}
    for name in (HEAD_CONTAINER, POOL_CONTAINER):
        mounts = container(head, name)["volumeMounts"]
        assert {"name": "ray-tmp", "mountPath": RAY_TMP_DIR} in mounts, name

    env = env_of(sidecar)
    assert env["MOEPLANE_POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["MOEPLANE_ROLE"]["value"] == role.value
    assert env["MOEPLANE_REVISION"]["value"] == rc["metadata"]["labels"][names.REVISION_LABEL]
    # engine.json is mounted in the sidecar from the engine ConfigMap; the pool's layout is the
    # MoEPool's, in the env (the same value that shaped this RayCluster); no placement ConfigMap.
    mounted = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    directory = str(Path(env["MOEPLANE_ENGINE_CONFIG"]["value"]).parent)
    engine_cm = names.engine_configmap(str(deployment(example).metadata.name))
    assert volumes[mounted[directory]]["configMap"]["name"] == engine_cm
    layout = json.loads(env["MOEPLANE_POOL_LAYOUT"]["value"])
    assert layout == resolve_runtime(deployment(example)).pool(role).to_wire()
    assert layout["nodesPerGroup"] == rc["spec"]["workerGroupSpecs"][0]["numOfHosts"]
    assert "MOEPLANE_PLACEMENT" not in env and "placement" not in volumes


def test_frontend_args_parse_with_the_moeplane_cli(capsys: pytest.CaptureFixture[str]) -> None:
    front = build_frontend_deployment(deployment(), "deepseek-r1", "default", CONFIG)
    args = front["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = parse_with_moeplane_cli(args, capsys)
    assert parsed.command == "frontend" and parsed.port == CONFIG.frontend_port
    # The pod's grace period covers the shutdown delay (still serving, /health 503) and the drain.
    assert (parsed.shutdown_delay, parsed.drain_timeout) == (5.0, 30.0)
    grace = front["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= parsed.shutdown_delay + parsed.drain_timeout


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return Path(spec.origin).read_text()


# Read by libraries in the pods, not by moeplane's code: huggingface_hub, NCCL, Gloo, UCX.
LIBRARY_ENV = {
    "HF_HOME", "HF_HUB_OFFLINE", "NCCL_IB_HCA", "NCCL_IB_GID_INDEX", "NCCL_SOCKET_IFNAME",
    "GLOO_SOCKET_IFNAME", "UCX_NET_DEVICES", "RAY_OVERRIDE_LABELS",
}  # fmt: skip


def test_every_env_var_set_is_one_the_workers_read() -> None:
    dep = deployment()
    rdma = {"resourceName": "rdma/hca", "hcas": ["mlx5_0"], "gidIndex": 3, "socketInterface": "eth0"}
    dep = dep.model_copy(
        update={"spec": dep.spec.model_copy(update={"hardware": dep.spec.hardware.model_validate(
            {**dep.spec.hardware.to_wire(), "rdma": rdma})})}
    )
    locations = _source("moeplane.api.locations")
    readers = {
        POOL_CONTAINER: _source("moeplane.workers.pool.settings") + _source("moeplane.workers.pool.main"),
        "frontend": _source("moeplane.workers.frontend.main"),
        WORKER_CONTAINER: "",
    }
    rc = raycluster(dep, Role.DECODE)
    worker = container(rc["spec"]["workerGroupSpecs"][0]["template"]["spec"], WORKER_CONTAINER)
    pods = {
        POOL_CONTAINER: container(rc["spec"]["headGroupSpec"]["template"]["spec"], POOL_CONTAINER),
        "frontend": build_frontend_deployment(dep, "deepseek-r1", "default", CONFIG)["spec"]["template"][
            "spec"
        ]["containers"][0],
        WORKER_CONTAINER: worker,
    }
    # The names are defined once (api/podcontract.py); each one a pod gets is read, by that name.
    names_ = vars(podcontract).items()
    contract = {value: attr for attr, value in names_ if attr.endswith("_ENV") and isinstance(value, str)}
    for name, c in pods.items():
        for var in env_of(c):
            if var in LIBRARY_ENV:
                continue
            wanted = contract.get(var, f'"{var}"')
            # Or Kubernetes reads it: `$(VAR)` in a later variable of the same container.
            expanded = any(f"$({var})" in str(e.get("value", "")) for e in env_of(c).values())
            read = wanted in readers[name] + locations or expanded
            assert read, f"{name} sets {var}, which nothing in moeplane reads"
    for name in (POOL_CONTAINER, "frontend"):
        needed = {"MOEPLANE_GRPC_TOKEN", "MOEPLANE_REDIS_URL", "MOEPLANE_ENGINE_CONFIG"}
        assert needed <= set(env_of(pods[name]))
    # The ranks get their settings from the driver through Ray; the worker's env is the pod's
    # volume root, the Hugging Face cache its ranks resolve hf:// weights in (R1's are), and the
    # fabric's (NCCL/Gloo/UCX), which the rank processes inherit.
    # Its KubeRay replica (and host) reach Ray as node labels: the binding of EP groups to replicas.
    replica = {podcontract.REPLICA_INDEX_ENV, podcontract.HOST_INDEX_ENV}
    assert set(env_of(worker)) == {"MOEPLANE_VOLUME_ROOT"} | LIBRARY_ENV | replica
    assert "env" not in container(rc["spec"]["headGroupSpec"]["template"]["spec"], HEAD_CONTAINER)
    assert "ports" not in worker  # ephemeral, advertised in Redis


def test_secrets_are_referenced_never_inlined() -> None:
    dep = deployment()
    secret_name = names.deployment_secret("deepseek-r1")
    specs = [raycluster(dep, role) for role in Role]
    specs.append(build_frontend_deployment(dep, "deepseek-r1", "default", CONFIG))
    for obj in specs:
        text = json.dumps(obj)
        assert PASSWORD not in text and "redis://" not in text, obj["metadata"]["name"]
    front = env_of(specs[-1]["spec"]["template"]["spec"]["containers"][0])
    sidecar = env_of(container(specs[0]["spec"]["headGroupSpec"]["template"]["spec"], POOL_CONTAINER))
    for env in (front, sidecar):
        assert env["MOEPLANE_GRPC_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": secret_name,
            "key": GRPC_TOKEN_KEY,
        }
        assert env["MOEPLANE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": secret_name,
            "key": REDIS_URL_KEY,
        }
    # No Redis configured: no reference to a key the Secret would not hold.
    bare = build_frontend_deployment(dep, "deepseek-r1", "default", OperatorConfig())
    assert "MOEPLANE_REDIS_URL" not in env_of(bare["spec"]["template"]["spec"]["containers"][0])
    secret = build_deployment_secret("deepseek-r1", "default", new_grpc_token(), None)
    assert set(secret["data"]) == {GRPC_TOKEN_KEY}


def test_an_existing_secret_is_patched_without_its_token() -> None:
    token = new_grpc_token()
    assert len(token) >= 43 and token != new_grpc_token()
    desired = build_deployment_secret("deepseek-r1", "default", token, CONFIG.redis_url)
    assert base64.b64decode(desired["data"][REDIS_URL_KEY]).decode() == CONFIG.redis_url
    assert base64.b64decode(desired["data"][GRPC_TOKEN_KEY]).decode() == token
    # The operator never reads a Secret: what it patches names everything but the token.
    patch = secret_patch(with_hash(desired, SECRET_UNHASHED))
    assert patch["data"] == {REDIS_URL_KEY: desired["data"][REDIS_URL_KEY]}
    assert GRPC_TOKEN_KEY not in json.dumps(patch) and token not in json.dumps(patch)
    assert patch["metadata"]["labels"] == desired["metadata"]["labels"]
    dropped = secret_patch(build_deployment_secret("deepseek-r1", "default", token, None))
    assert dropped["data"] == {REDIS_URL_KEY: None}
    # The hash annotation every reader of the metadata sees does not depend on the values.
    other = build_deployment_secret("deepseek-r1", "default", new_grpc_token(), "redis://other:6379/0")
    hashed = [with_hash(s, SECRET_UNHASHED)["metadata"]["annotations"] for s in (desired, other)]
    assert hashed[0][DESIRED_HASH] == hashed[1][DESIRED_HASH]
    with pytest.raises(ValueError, match="grpc_token"):
        build_deployment_secret("deepseek-r1", "default", "", None)


def test_the_operator_reads_no_secret() -> None:
    from moeplane.operator.handlers import make_settings
    from moeplane.operator.kinds import CACHED_KINDS

    assert SECRET not in CACHED_KINDS
    assert SECRET.kopf_resource not in make_settings(OperatorConfig()).watching.label_selectors
