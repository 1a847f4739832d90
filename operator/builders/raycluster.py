"""The KubeRay RayCluster of a MoEPool: one worker group, one replica per EP group.

`numOfHosts` is the nodes of one EP group (18 for DeepSeek's EP144 decode on 8-GPU nodes), and
`replicas` the EP groups. In-tree autoscaling is off: moeplane owns replicas through the pool's
`/scale`. The revision is a hash of everything that would restart a worker (layout, image,
resources, scheduling, pod-template fields, the model locations, the static-EPLB load file), so a
change there rolls a new RayCluster in beside the old one.

KubeRay >= 1.6 labels every worker pod of a multi-host group with its replica group
(`ray.io/worker-group-replica-name`, `ray.io/worker-group-replica-index`,
`ray.io/replica-host-index`; api/podcontract.py). `topologyKey` turns the first into a pod
affinity, so all hosts of one EP group share one topology domain (a rack, an NVLink clique).

Gang scheduling goes through KubeRay's batch-scheduler integration, which reads the RayCluster's
labels: with `pod.schedulerName: volcano` (KubeRay run with `batchScheduler.name=volcano`) Volcano
binds each RayCluster's pods all-or-nothing (a PodGroup of the head and every worker, resized with
the replicas, so a scale step binds a whole group or nothing); with `pod.queue` and the default
scheduler, Kueue admits the RayCluster as one workload.

The pool's layout (`spec.layout`) shapes its pods and reaches its `moeplane pool` in
`MOEPLANE_POOL_LAYOUT`; the rest of the runtime document is the deployment's engine ConfigMap.
The env and paths the sidecar reads are named in `api/pc.py`.

Static EPLB: `moeplane pool` reads the load file at `MOEPLANE_EPLB_LOAD_FILE`. A
`configmap://NAME/KEY` load file is that ConfigMap's one key, mounted read-only at
`EPLB_LOAD_DIR/KEY` in the head pod's `moeplane pool` sidecar and in the worker pods; the operator
never reads it. A missing ConfigMap (or key) keeps the pods in ContainerCreating with a FailedMount
event naming it, as for any ConfigMap volume. Editing the ConfigMap's content does not restart the
pool: the placement is computed once at start, so roll it by pointing `loadFile` at a new name or key.
"""

from __future__ import annotations

import hashlib
import json
import math
from decimal import Decimal
from typing import Any

from moeplane.api import podcontract as pc
from moeplane.api.configmapref import ConfigMapKeyRef, parse_configmap_ref
from moeplane.api.hardware import HardwarePreset
from moeplane.api.podchecks import parse_quantity, shm_size
from moeplane.api.spec import MoEPoolSpec
from moeplane.operator import names
from moeplane.operator.builders import podparts
from moeplane.operator.builders.secret import GRPC_TOKEN_KEY, REDIS_URL_KEY, secret_env
from moeplane.operator.builders.storage import ModelMounts, model_mounts
from moeplane.operator.config import OperatorConfig

WORKER_CONTAINER = "ray-worker"
MAX_GROUPS = 2**31 - 1  # KubeRay's own default
HEAD_CONTAINER = "ray-head"
POOL_CONTAINER = "moeplane-pool"
POOL_ARGS = ("pool", "--host", "0.0.0.0", "--ready-file", pc.POOL_READY_FILE)  # entrypoint `moeplane`
# Serving readiness: Ready while every EP group the pool should run is up (workers/pool/runner.py).
POOL_READINESS = {
    "exec": {"command": ["cat", pc.POOL_READY_FILE]},
    "periodSeconds": 2,
    "timeoutSeconds": 2,
    "failureThreshold": 1,
}
RAY_TMP_VOLUME = pc.RAY_TMP_VOLUME
RAY_TMP_DIR = pc.RAY_TMP_DIR
EPLB_LOAD_VOLUME = pc.EPLB_LOAD_VOLUME
EPLB_LOAD_DIR = pc.EPLB_LOAD_DIR
IPC_LOCK = "IPC_LOCK"  # RDMA registers (pins) memory
GIB = 2**30
# Host memory of a worker beside /dev/shm: weights staged on load, Ray, the KV transfer's buffers.
GPU_HOST_MEMORY_PER_GPU = 16 * GIB
CPU_MEMORY_PER_RANK = 2 * GIB
CPUS_PER_GPU = 4


def gpus_per_pod(pool: MoEPoolSpec) -> int:
    """GPUs (or CPU ranks) in one pod: a whole node, or the whole group when it is smaller."""
    return pool.layout.gpus_per_group // pool.layout.nodes_per_group


def _gib(value: Decimal) -> str:
    return f"{math.ceil(value / GIB)}Gi"


def _worker_resources(pool: MoEPoolSpec, accelerator: HardwarePreset) -> dict[str, Any]:
    """CPU and memory sized for the pod's /dev/shm (memory-backed, so it counts against the memory
    request), GPUs and RDMA NICs from the layout; the spec's resources merged over the defaults."""
    per_pod = gpus_per_pod(pool)
    shm = parse_quantity(shm_size(pool.pod, accelerator))
    if accelerator is HardwarePreset.CPU:
        defaults = {"cpu": str(per_pod), "memory": _gib(shm + per_pod * CPU_MEMORY_PER_RANK)}
    else:
        defaults = {
            "cpu": str(CPUS_PER_GPU * per_pod),
            "memory": _gib(shm + per_pod * GPU_HOST_MEMORY_PER_GPU),
        }
    out = podparts.merge_resources({"requests": defaults}, pool.resources)
    if accelerator is not HardwarePreset.CPU:
        # Extended resources must be requested equal to their limit.
        extended = {pool.gpu_resource_name: str(per_pod)}
        if pool.rdma is not None:
            extended[pool.rdma.resource_name] = str(per_pod)
        out["requests"] = {**out.get("requests", {}), **extended}
        out["limits"] = {**out.get("limits", {}), **extended}
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
        {"name": pc.ROLE_ENV, "value": pool.role.value},
        {"name": pc.POOL_ENV, "value": pool_name},
        {"name": pc.REVISION_ENV, "value": revision},
        {"name": pc.ENGINE_CONFIG_ENV, "value": pc.ENGINE_PATH},
        {"name": pc.POOL_LAYOUT_ENV, "value": json.dumps(pool.layout.to_wire(), sort_keys=True)},
        secret_env(pc.GRPC_TOKEN_ENV, pool.deployment_name, GRPC_TOKEN_KEY),
        # The groups advertise the pod's own address in the registry.
        {"name": pc.POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    if config.redis_url:
        env.append(secret_env(pc.REDIS_URL_ENV, pool.deployment_name, REDIS_URL_KEY))
    load_path = eplb_load_path(pool)
    if load_path is not None:
        env.append({"name": pc.EPLB_LOAD_FILE_ENV, "value": load_path})
    return env


def _head_volumes(pool: MoEPoolSpec, pool_name: str) -> list[dict[str, Any]]:
    return [
        {"name": RAY_TMP_VOLUME, "emptyDir": {}},
        {"name": pc.ENGINE_VOLUME, "configMap": {"name": names.engine_configmap(pool.deployment_name)}},
        *_eplb_load_volumes(pool),
    ]


# `moeplane pool --ray-address auto` finds the head through the session files Ray writes under
# /tmp/ray, so the head and the sidecar share that directory.
_RAY_TMP_MOUNT = {"name": RAY_TMP_VOLUME, "mountPath": RAY_TMP_DIR}
_POOL_MOUNTS = [
    _RAY_TMP_MOUNT,
    {"name": pc.ENGINE_VOLUME, "mountPath": pc.ENGINE_DIR, "readOnly": True},
]


def _model(pool: MoEPoolSpec, image: str, config: OperatorConfig, *, light: bool) -> ModelMounts:
    return model_mounts(
        pool.storage,
        light=light,
        image=image,
        fetch_env=podparts.user_env(pool.pod),
        security_context=podparts.container_security_context(pool.pod),
        resources=config.fetch_resources,
    )


def pool_sidecar(
    pool: MoEPoolSpec, pool_name: str, image: str, revision: str, config: OperatorConfig
) -> dict[str, Any]:
    """The head pod's `moeplane pool`: it starts the EP groups on the Ray cluster and registers
    them in Redis. Its control services listen on ephemeral ports advertised in the registry."""
    model = _model(pool, image, config, light=True)
    return {
        "name": POOL_CONTAINER,
        "image": image,
        "args": list(POOL_ARGS),
        "env": [*pool_env(pool, pool_name, revision, config), *model.env, *podparts.user_env(pool.pod)],
        "resources": config.pool_resources,
        "readinessProbe": POOL_READINESS,
        "securityContext": podparts.container_security_context(pool.pod),
        "volumeMounts": [
            *_POOL_MOUNTS,
            *_eplb_load_mounts(pool),
            *model.mounts,
            *podparts.user_mounts(pool.pod),
        ],
    }


def _topology_affinity(pool: MoEPoolSpec, pool_name: str) -> dict[str, Any] | None:
    """Every host of one EP group in the same `topologyKey` domain: a required pod affinity to the
    pods of the same KubeRay replica group (`matchLabelKeys` takes this pod's own replica name; the
    first host of a group matches itself, so it may land anywhere)."""
    if pool.topology_key is None or pool.layout.nodes_per_group <= 1:
        return None
    return {
        "labelSelector": {"matchLabels": {names.POOL_LABEL: names.label_value(pool_name)}},
        "matchLabelKeys": [pc.RAY_REPLICA_NAME_LABEL],
        "topologyKey": pool.topology_key,
    }


def _scheduling(pool: MoEPoolSpec, pool_name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if pool.node_selector:
        out["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        out["tolerations"] = list(pool.tolerations)
    affinity = dict(pool.affinity or {})
    term = _topology_affinity(pool, pool_name)
    if term is not None:
        pod_affinity = dict(affinity.get("podAffinity") or {})
        required = list(pod_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or [])
        pod_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = [*required, term]
        affinity["podAffinity"] = pod_affinity
    if affinity:
        out["affinity"] = affinity
    return out


def _label_env(name: str, label: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{label}']"}}}


def replica_env(pool: MoEPoolSpec) -> list[dict[str, Any]]:
    """The pod's KubeRay replica group (and host in it) as Ray node labels: `ray start` reads
    `RAY_OVERRIDE_LABELS`, and Kubernetes expands `$(VAR)` from the downward-API variables before it.
    KubeRay >= 1.6 labels every worker pod with its replica index, and the pods of a multi-host
    group with their host index too (api/podcontract.py)."""
    env = [_label_env(pc.REPLICA_INDEX_ENV, pc.RAY_REPLICA_INDEX_LABEL)]
    labels = {pc.NODE_REPLICA_LABEL: f"$({pc.REPLICA_INDEX_ENV})"}
    if pool.layout.nodes_per_group > 1:
        env.append(_label_env(pc.HOST_INDEX_ENV, pc.RAY_HOST_INDEX_LABEL))
        labels[pc.NODE_HOST_LABEL] = f"$({pc.HOST_INDEX_ENV})"
    env.append({"name": pc.RAY_LABELS_ENV, "value": json.dumps(labels, sort_keys=True)})
    return env


def _worker_env(pool: MoEPoolSpec, model: ModelMounts) -> list[dict[str, Any]]:
    rdma = podparts.env_values(pc.rdma_env(pool.rdma)) if pool.rdma is not None else []
    return [*replica_env(pool), *model.env, *rdma, *podparts.user_env(pool.pod)]


def _worker_annotations(pool: MoEPoolSpec) -> dict[str, str]:
    if pool.rdma is None or not pool.rdma.networks:
        return {}
    return {pc.MULTUS_NETWORKS_ANNOTATION: ",".join(pool.rdma.networks)}


def _head_group(
    pool: MoEPoolSpec, pool_name: str, image: str, config: OperatorConfig, revision: str
) -> dict[str, Any]:
    labels = names.pool_labels(pool.deployment_name, pool_name, pool.role)
    sidecar = pool_sidecar(pool, pool_name, image, revision, config)
    model = _model(pool, image, config, light=True)
    spec: dict[str, Any] = {
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
                "securityContext": podparts.container_security_context(pool.pod),
                "volumeMounts": [_RAY_TMP_MOUNT, *podparts.user_mounts(pool.pod)],
                **({"env": podparts.user_env(pool.pod)} if podparts.user_env(pool.pod) else {}),
            },
            sidecar,
        ],
        "volumes": [*_head_volumes(pool, pool_name), *model.volumes, *podparts.user_volumes(pool.pod)],
        # `ray.init` in the `moeplane pool` sidecar finds the local raylet among the processes it can
        # see (Ray >= 2.5x; ray-project/ray #59229, the sidecar case in #63935): share the pod's PID
        # namespace with the Ray head container, or the sidecar never joins its cluster.
        "shareProcessNamespace": True,
        # The head runs on the pod network: host networking is for the workers' fabric.
        **podparts.pod_fields(config, pool.pod, host_network_allowed=False),
    }
    if model.init_containers:
        spec["initContainers"] = model.init_containers
    return {
        "serviceType": "ClusterIP",
        # The head schedules nothing itself: every rank runs on a worker.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0", "num-gpus": "0"},
        "template": {"metadata": podparts.pod_metadata(labels, pool.pod, {}), "spec": spec},
    }


def _worker_group(
    pool: MoEPoolSpec,
    pool_name: str,
    image: str,
    accelerator: HardwarePreset,
    config: OperatorConfig,
    workers_to_delete: tuple[str, ...] = (),
) -> dict[str, Any]:
    per_pod = gpus_per_pod(pool)
    start_params = (
        {"num-cpus": str(per_pod)} if accelerator is HardwarePreset.CPU else {"num-gpus": str(per_pod)}
    )
    labels = names.pool_labels(pool.deployment_name, pool_name, pool.role)
    model = _model(pool, image, config, light=False)
    capabilities = [IPC_LOCK] if pool.rdma is not None else []
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": image,
        "resources": _worker_resources(pool, accelerator),
        "securityContext": podparts.container_security_context(pool.pod, capabilities),
        # The ranks get their settings from the pool's driver through Ray, and their KV services
        # listen on ephemeral ports advertised in the registry. The load file is mounted here too, so
        # that a missing ConfigMap holds every pod of the pool in ContainerCreating with the same
        # event, not only the head.
        "volumeMounts": [
            {"name": pc.SHM_VOLUME, "mountPath": pc.SHM_DIR},
            *_eplb_load_mounts(pool),
            *model.mounts,
            *podparts.user_mounts(pool.pod),
        ],
        "env": _worker_env(pool, model),
    }
    spec: dict[str, Any] = {
        "containers": [container],
        # NCCL and Ray's object store live in shared memory; the container default is 64 MiB.
        "volumes": [
            {
                "name": pc.SHM_VOLUME,
                "emptyDir": {"medium": "Memory", "sizeLimit": shm_size(pool.pod, accelerator)},
            },
            *_eplb_load_volumes(pool),
            *model.volumes,
            *podparts.user_volumes(pool.pod),
        ],
        **_scheduling(pool, pool_name),
        **podparts.pod_fields(config, pool.pod),
    }
    if model.init_containers:
        spec["initContainers"] = model.init_containers
    scale = {"scaleStrategy": {"workersToDelete": list(workers_to_delete)}} if workers_to_delete else {}
    return {
        "groupName": pool.role.value,
        "replicas": pool.replicas,
        # The pods of drained EP groups, named so that KubeRay deletes exactly them (operator/rollout.py).
        **scale,
        # Bounds only matter to KubeRay's autoscaler, which is off; replicas must stay within them.
        "minReplicas": 0,
        "maxReplicas": MAX_GROUPS,
        "numOfHosts": pool.layout.nodes_per_group,
        "rayStartParams": start_params,
        "template": {
            "metadata": podparts.pod_metadata(labels, pool.pod, _worker_annotations(pool)),
            "spec": spec,
        },
    }


def _template_spec(
    pool: MoEPoolSpec,
    pool_name: str,
    accelerator: HardwarePreset,
    config: OperatorConfig,
    revision: str,
    workers_to_delete: tuple[str, ...] = (),
) -> dict[str, Any]:
    image = pool.image or config.image
    return {
        "rayVersion": config.ray_version,
        "enableInTreeAutoscaling": False,
        "headGroupSpec": _head_group(pool, pool_name, image, config, revision),
        "workerGroupSpecs": [
            _worker_group(pool, pool_name, image, accelerator, config, workers_to_delete)
        ],
    }


def gang_labels(pool: MoEPoolSpec) -> dict[str, str]:
    """RayCluster labels that KubeRay's batch-scheduler integration (or Kueue) reads."""
    pod = pool.pod
    if pod is None:
        return {}
    out: dict[str, str] = {}
    if pod.scheduler_name == pc.VOLCANO_SCHEDULER:
        if pod.queue:
            out[pc.VOLCANO_QUEUE_LABEL] = pod.queue
        if pod.priority_class_name:
            out[pc.RAY_PRIORITY_CLASS_LABEL] = pod.priority_class_name
    elif pod.queue:
        out[pc.KUEUE_QUEUE_LABEL] = pod.queue
    return out


def pool_revision(
    pool: MoEPoolSpec, pool_name: str, accelerator: HardwarePreset, config: OperatorConfig
) -> str:
    """8 hex digits over what restarts a worker; replicas are left out (scaling is not a rollout)."""
    spec = _template_spec(
        pool.model_copy(update={"replicas": 0}), pool_name, accelerator, config, revision=""
    )
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]


def build_raycluster(
    pool: MoEPoolSpec,
    pool_name: str,
    namespace: str,
    accelerator: HardwarePreset,
    config: OperatorConfig,
    replicas: int | None = None,
    workers_to_delete: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The RayCluster of the pool's current revision; `replicas` (default: the pool's) and
    `workers_to_delete` are what the rollout plan gives this revision now."""
    revision = pool_revision(pool, pool_name, accelerator, config)
    if replicas is not None:
        pool = pool.model_copy(update={"replicas": replicas})
    labels = {
        **gang_labels(pool),
        **names.pool_labels(pool.deployment_name, pool_name, pool.role),
        names.REVISION_LABEL: revision,
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": names.raycluster(pool_name, revision), "namespace": namespace, "labels": labels},
        "spec": _template_spec(pool, pool_name, accelerator, config, revision, workers_to_delete),
    }
