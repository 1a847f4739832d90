"""The KubeRay RayCluster of a MoEPool: one worker group, one replica per EP group.

`numOfHosts` is the nodes of one EP group (18 for DeepSeek's EP144 decode on 8-GPU nodes), and
`replicas` the EP groups. In-tree autoscaling is off: moeplane owns replicas through the pool's
`/scale`. The revision is a hash of everything that would restart a worker (layout, image,
resources, scheduling, the static-EPLB load file), so a change there rolls a new RayCluster in
beside the old one.

The pool's layout (`spec.layout`) shapes its pods and reaches its `moeplane pool` in
`MOEPLANE_POOL_LAYOUT`; the rest of the runtime document is the deployment's engine ConfigMap.
The env and paths the sidecar reads are named in `api/podenv.py`.

Static EPLB: `moeplane pool` reads the load file at `MOEPLANE_EPLB_LOAD_FILE`. A
`configmap://NAME/KEY` load file is that ConfigMap's one key, mounted read-only at
`EPLB_LOAD_DIR/KEY` in the head pod's `moeplane pool` sidecar and in the worker pods; the operator
never reads it. A missing ConfigMap
(or key) keeps the pods in ContainerCreating with a FailedMount event naming it, as for any
ConfigMap volume. Editing the ConfigMap's content does not restart the pool: the placement is
computed once at start, so roll it by pointing `loadFile` at a new name or key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from moeplane.api import podenv
from moeplane.api.configmapref import ConfigMapKeyRef, parse_configmap_ref
from moeplane.api.hardware import HardwarePreset
from moeplane.api.spec import MoEPoolSpec
from moeplane.operator import names
from moeplane.operator.builders.secret import GRPC_TOKEN_KEY, REDIS_URL_KEY, secret_env
from moeplane.operator.config import OperatorConfig

WORKER_CONTAINER = "ray-worker"
MAX_GROUPS = 2**31 - 1  # KubeRay's own default
HEAD_CONTAINER = "ray-head"
POOL_CONTAINER = "moeplane-pool"
POOL_ARGS = ("pool", "--host", "0.0.0.0")  # the image's entrypoint is `moeplane`
RAY_TMP_VOLUME = "ray-tmp"
RAY_TMP_DIR = "/tmp/ray"
EPLB_LOAD_VOLUME = "eplb-load"
EPLB_LOAD_DIR = podenv.EPLB_LOAD_DIR


def gpus_per_pod(pool: MoEPoolSpec) -> int:
    """GPUs (or CPU ranks) in one pod: a whole node, or the whole group when it is smaller."""
    return pool.layout.gpus_per_group // pool.layout.nodes_per_group


def _worker_resources(pool: MoEPoolSpec, accelerator: HardwarePreset) -> dict[str, Any]:
    per_pod = gpus_per_pod(pool)
    user = pool.resources or {}
    requests = dict(user.get("requests") or {})
    limits = dict(user.get("limits") or {})
    if accelerator is HardwarePreset.CPU:
        requests.setdefault("cpu", str(per_pod))
    else:
        # Extended resources must be requested equal to their limit.
        extended = {pool.gpu_resource_name: str(per_pod)}
        if pool.rdma_resource_name:
            extended[pool.rdma_resource_name] = str(per_pod)
        requests.update(extended)
        limits.update(extended)
    out: dict[str, Any] = {"requests": requests}
    if limits:
        out["limits"] = limits
    return out


def _load_configmap(pool: MoEPoolSpec) -> ConfigMapKeyRef | None:
    return None if pool.eplb_load_file is None else parse_configmap_ref(pool.eplb_load_file)


def eplb_load_path(pool: MoEPoolSpec) -> str | None:
    """Where the pool's pods see its static-EPLB load file: the mounted ConfigMap key, or the
    path as given (the image or a user's volume provides it). None without static EPLB."""
    ref = _load_configmap(pool)
    if ref is not None:
        return f"{EPLB_LOAD_DIR}/{ref.key}"
    return pool.eplb_load_file


def _eplb_load_volumes(pool: MoEPoolSpec) -> list[dict[str, Any]]:
    ref = _load_configmap(pool)
    if ref is None:
        return []
    # Only the key the pool reads: a ConfigMap of many load files exposes no others to this pod.
    items = [{"key": ref.key, "path": ref.key}]
    return [{"name": EPLB_LOAD_VOLUME, "configMap": {"name": ref.name, "items": items}}]


def _eplb_load_mounts(pool: MoEPoolSpec) -> list[dict[str, Any]]:
    if _load_configmap(pool) is None:
        return []
    return [{"name": EPLB_LOAD_VOLUME, "mountPath": EPLB_LOAD_DIR, "readOnly": True}]


def pool_env(
    pool: MoEPoolSpec, pool_name: str, revision: str, config: OperatorConfig
) -> list[dict[str, Any]]:
    """What `moeplane pool` reads (workers/pool/settings.py); secrets come from the deployment's
    Secret, never as plain values."""
    env: list[dict[str, Any]] = [
        {"name": podenv.ROLE_ENV, "value": pool.role.value},
        {"name": podenv.POOL_ENV, "value": pool_name},
        {"name": podenv.REVISION_ENV, "value": revision},
        {"name": podenv.ENGINE_CONFIG_ENV, "value": podenv.ENGINE_PATH},
        {"name": podenv.POOL_LAYOUT_ENV, "value": json.dumps(pool.layout.to_wire(), sort_keys=True)},
        secret_env(podenv.GRPC_TOKEN_ENV, pool.deployment_name, GRPC_TOKEN_KEY),
        # The groups advertise the pod's own address in the registry.
        {"name": podenv.POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    if config.redis_url:
        env.append(secret_env(podenv.REDIS_URL_ENV, pool.deployment_name, REDIS_URL_KEY))
    load_path = eplb_load_path(pool)
    if load_path is not None:
        env.append({"name": podenv.EPLB_LOAD_FILE_ENV, "value": load_path})
    return env


def _head_volumes(pool: MoEPoolSpec, pool_name: str) -> list[dict[str, Any]]:
    return [
        {"name": RAY_TMP_VOLUME, "emptyDir": {}},
        {"name": "engine", "configMap": {"name": names.engine_configmap(pool.deployment_name)}},
        *_eplb_load_volumes(pool),
    ]


# `moeplane pool --ray-address auto` finds the head through the session files Ray writes under
# /tmp/ray, so the head and the sidecar share that directory.
_RAY_TMP_MOUNT = {"name": RAY_TMP_VOLUME, "mountPath": RAY_TMP_DIR}
_POOL_MOUNTS = [
    _RAY_TMP_MOUNT,
    {"name": "engine", "mountPath": podenv.ENGINE_DIR, "readOnly": True},
]


def pool_sidecar(
    pool: MoEPoolSpec, pool_name: str, image: str, revision: str, config: OperatorConfig
) -> dict[str, Any]:
    """The head pod's `moeplane pool`: it starts the EP groups on the Ray cluster and registers
    them in Redis. Its control services listen on ephemeral ports advertised in the registry."""
    return {
        "name": POOL_CONTAINER,
        "image": image,
        "args": list(POOL_ARGS),
        "env": pool_env(pool, pool_name, revision, config),
        "resources": config.pool_resources,
        "volumeMounts": [*_POOL_MOUNTS, *_eplb_load_mounts(pool)],
    }


def _scheduling(pool: MoEPoolSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if pool.node_selector:
        out["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        out["tolerations"] = list(pool.tolerations)
    if pool.affinity:
        out["affinity"] = dict(pool.affinity)
    return out


def _template_spec(
    pool: MoEPoolSpec,
    pool_name: str,
    accelerator: HardwarePreset,
    config: OperatorConfig,
    revision: str,
) -> dict[str, Any]:
    image = pool.image or config.image
    per_pod = gpus_per_pod(pool)
    start_params = (
        {"num-cpus": str(per_pod)} if accelerator is HardwarePreset.CPU else {"num-gpus": str(per_pod)}
    )
    labels = names.pool_labels(pool.deployment_name, pool_name, pool.role)
    head = {
        "serviceType": "ClusterIP",
        # The head schedules nothing itself: every rank runs on a worker.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0", "num-gpus": "0"},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                # KubeRay turns the first container into the Ray head; the others run as given.
                "containers": [
                    {
                        "name": HEAD_CONTAINER,
                        "image": image,
                        "resources": config.head_resources,
                        "ports": [
                            {"containerPort": 6379, "name": "gcs"},
                            {"containerPort": 8265, "name": "dashboard"},
                            {"containerPort": 10001, "name": "client"},
                        ],
                        "volumeMounts": [_RAY_TMP_MOUNT],
                    },
                    pool_sidecar(pool, pool_name, image, revision, config),
                ],
                "volumes": _head_volumes(pool, pool_name),
            },
        },
    }
    worker = {
        "groupName": pool.role.value,
        "replicas": pool.replicas,
        # Bounds only matter to KubeRay's autoscaler, which is off; replicas must stay within them.
        "minReplicas": 0,
        "maxReplicas": MAX_GROUPS,
        "numOfHosts": pool.layout.nodes_per_group,
        "rayStartParams": start_params,
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "containers": [
                    {
                        "name": WORKER_CONTAINER,
                        "image": image,
                        "resources": _worker_resources(pool, accelerator),
                        # The ranks get their settings from the pool's driver through Ray, and their
                        # KV services listen on ephemeral ports advertised in the registry.
                        # The load file too, so that a missing ConfigMap holds every pod of the
                        # pool in ContainerCreating with the same event, not only the head.
                        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, *_eplb_load_mounts(pool)],
                    }
                ],
                # NCCL and Ray's object store live in shared memory; the container default is 64 MiB.
                "volumes": [
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}},
                    *_eplb_load_volumes(pool),
                ],
                **_scheduling(pool),
            },
        },
    }
    return {
        "rayVersion": config.ray_version,
        "enableInTreeAutoscaling": False,
        "headGroupSpec": head,
        "workerGroupSpecs": [worker],
    }


def pool_revision(
    pool: MoEPoolSpec, pool_name: str, namespace: str, accelerator: HardwarePreset, config: OperatorConfig
) -> str:
    """8 hex digits over what restarts a worker; replicas are left out (scaling is not a rollout)."""
    spec = _template_spec(
        pool.model_copy(update={"replicas": 0}), pool_name, accelerator, config, revision=""
    )
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]


def build_raycluster(
    pool: MoEPoolSpec, pool_name: str, namespace: str, accelerator: HardwarePreset, config: OperatorConfig
) -> dict[str, Any]:
    revision = pool_revision(pool, pool_name, namespace, accelerator, config)
    labels = {**names.pool_labels(pool.deployment_name, pool_name, pool.role), names.REVISION_LABEL: revision}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": names.raycluster(pool_name, revision), "namespace": namespace, "labels": labels},
        "spec": _template_spec(pool, pool_name, accelerator, config, revision),
    }
