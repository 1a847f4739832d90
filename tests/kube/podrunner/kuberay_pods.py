"""The Pods KubeRay creates for a RayCluster (pure), ported from ray-project/kuberay v1.6.2.

Sources, function by function:
- ray-operator/controllers/ray/raycluster_controller.go: `buildHeadPod`, `buildWorkerPod`,
  `createHeadPod` (the recreate-hash and version annotations);
- ray-operator/controllers/ray/common/pod.go: `DefaultHeadPodTemplate`, `DefaultWorkerPodTemplate`
  (the `wait-gcs-ready` init container, the multi-host replica labels), `BuildPod` (the command
  rewrite `/bin/bash -c -- "ulimit -n 65536; ray start ..."`, the /dev/shm volume),
  `setContainerEnvVars`, `setInitContainerEnvVars`, `labelPod`, `initLivenessAndReadinessProbe`;
- ray-operator/controllers/ray/utils/util.go: `GetContainerCommand`.
The `ray start` command itself is `kuberay_start`; the Services are `kuberay_services`.

What is left out because the operator never asks for it: autoscaling (in-tree autoscaling is off),
GCS fault tolerance (no `gcsFaultToleranceOptions`), token auth (`authOptions`), RayService/RayJob
creators and batch schedulers. A RayCluster that asks for one of them is refused with
`UnsupportedByRunner` rather than run differently from KubeRay.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tests.kube.podrunner import kuberay_api as K
from tests.kube.podrunner.kuberay_start import (
    check_label,
    fqdn_ray_ip,
    generate_ray_start_command,
    head_port,
    pod_name_prefix,
    set_missing_ray_start_params,
    update_params_labels,
    update_params_resources,
)

Obj = dict[str, Any]


@dataclass(frozen=True)
class KubeRayConfig:
    """The KubeRay operator's own switches (environment variables of its Deployment)."""

    init_container_injection: bool = True  # ENABLE_INIT_CONTAINER_INJECTION (common/pod.go)
    probes_injection: bool = True  # ENABLE_PROBES_INJECTION (utils/constant.go)


DEFAULT_CONFIG = KubeRayConfig()


class UnsupportedByRunner(ValueError):
    """A RayCluster feature the runner does not play (it would not run it the way KubeRay does)."""


# ---- labels, env, probes ----------------------------------------------------------------------------
def label_pod(node_type: str, cluster: str, group: str, overrides: Mapping[str, str]) -> dict[str, str]:
    """common.labelPod: KubeRay's labels; ray.io/node-type, ray.io/group and ray.io/cluster win."""
    labels = {
        K.RAY_NODE_LABEL: "yes",
        K.RAY_CLUSTER_LABEL: cluster,
        K.RAY_NODE_TYPE_LABEL: node_type,
        K.RAY_NODE_GROUP_LABEL: group,
        K.RAY_ID_LABEL: check_label(f"{cluster}-{node_type}"),
        K.APP_NAME_LABEL: K.APPLICATION_NAME,
        K.CREATED_BY_LABEL: K.COMPONENT_NAME,
    }
    for key, val in overrides.items():
        if key not in (K.RAY_NODE_TYPE_LABEL, K.RAY_NODE_GROUP_LABEL, K.RAY_CLUSTER_LABEL):
            labels[key] = val
    return labels


def _env_exists(name: str, env: list[Obj]) -> bool:
    return any(e.get("name") == name for e in env)


def _field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def set_container_env(container: Obj, node_type: str, fqdn: str, port: str, ray_start: str) -> None:
    """common.setContainerEnvVars for a RayCluster (no RayService extras)."""
    env: list[Obj] = container.setdefault("env", [])
    ip = K.LOCAL_HOST
    if node_type == K.WORKER_NODE:
        ip = fqdn
        env.append({"name": K.FQ_RAY_IP, "value": ip})
        env.append({"name": K.RAY_IP, "value": ip.split(".")[0]})
    env.append(_field_env(K.RAY_CLUSTER_NAME, f"metadata.labels['{K.RAY_CLUSTER_LABEL}']"))
    env.append(_field_env(K.RAY_CLUSTER_NAMESPACE, "metadata.namespace"))
    env.append(_field_env(K.RAY_CLOUD_INSTANCE_ID, "metadata.name"))
    env.append(_field_env(K.RAY_NODE_TYPE_NAME, f"metadata.labels['{K.RAY_NODE_GROUP_LABEL}']"))
    env.append({"name": K.KUBERAY_GEN_RAY_START_CMD, "value": ray_start})
    if not _env_exists(K.RAY_PORT, env):
        env.append({"name": K.RAY_PORT, "value": port})
    if not _env_exists(K.RAY_ADDRESS, env):
        env.append({"name": K.RAY_ADDRESS, "value": f"{ip}:{port}"})
    if not _env_exists(K.RAY_USAGE_STATS_KUBERAY_IN_USE, env):
        env.append({"name": K.RAY_USAGE_STATS_KUBERAY_IN_USE, "value": "1"})
    if node_type == K.HEAD_NODE:
        env.append(
            {
                "name": K.RAY_USAGE_STATS_EXTRA_TAGS,
                "value": f"kuberay_version={K.KUBERAY_VERSION};kuberay_crd=RayCluster",
            }
        )
    if not _env_exists(K.RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE, env):
        env.append({"name": K.RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE, "value": "1"})


def _version(text: str) -> tuple[int, ...] | None:
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(x or 0) for x in match.groups()) if match else None


def init_probes(container: Obj, node_type: str, params: Mapping[str, str], ray_version: str) -> None:
    """common.initLivenessAndReadinessProbe: exec wget probes, or one httpGet from Ray 2.53."""

    def port(key: str, default: int) -> int:
        text = params.get(key, "")
        return int(text) if text.isdigit() else default

    agent_port = port("dashboard-agent-listen-port", K.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT)
    parsed = _version(ray_version)
    unified = parsed is not None and parsed >= K.UNIFIED_HEALTH_CHECK_RAY_VERSION
    raylet = K.BASE_WGET_HEALTH_COMMAND.format(
        timeout=K.READINESS_TIMEOUT_S, port=agent_port, path=K.RAY_AGENT_RAYLET_HEALTH_PATH
    )
    # KubeRay passes DefaultReadinessProbeFailureThreshold (10) as this wget's timeout: copied as is.
    gcs = K.BASE_WGET_HEALTH_COMMAND.format(
        timeout=K.READINESS_FAILURE_THRESHOLD,
        port=port("dashboard-port", K.DEFAULT_DASHBOARD_PORT),
        path=K.RAY_DASHBOARD_GCS_HEALTH_PATH,
    )
    commands = [raylet, gcs] if node_type == K.HEAD_NODE else [raylet]
    action: Obj = (
        {"httpGet": {"path": K.RAY_NODE_HEALTH_PATH, "port": agent_port}}
        if unified
        else {"exec": {"command": ["bash", "-c", " && ".join(commands)]}}
    )
    head = node_type == K.HEAD_NODE
    if container.get("livenessProbe") is None:
        container["livenessProbe"] = {
            "initialDelaySeconds": K.LIVENESS_INITIAL_DELAY_S,
            "timeoutSeconds": K.HEAD_LIVENESS_TIMEOUT_S if head else K.LIVENESS_TIMEOUT_S,
            "periodSeconds": K.LIVENESS_PERIOD_S,
            "successThreshold": K.LIVENESS_SUCCESS_THRESHOLD,
            "failureThreshold": K.LIVENESS_FAILURE_THRESHOLD,
            **copy.deepcopy(action),
        }
    if container.get("readinessProbe") is None:
        container["readinessProbe"] = {
            "initialDelaySeconds": K.READINESS_INITIAL_DELAY_S,
            "timeoutSeconds": K.HEAD_READINESS_TIMEOUT_S if head else K.READINESS_TIMEOUT_S,
            "periodSeconds": K.READINESS_PERIOD_S,
            "successThreshold": K.READINESS_SUCCESS_THRESHOLD,
            "failureThreshold": K.READINESS_FAILURE_THRESHOLD,
            **copy.deepcopy(action),
        }


# ---- pods ---------------------------------------------------------------------------------------------
def _refuse_unsupported(rc: Mapping[str, Any]) -> None:
    spec = rc.get("spec") or {}
    for key in ("gcsFaultToleranceOptions", "authOptions"):
        if spec.get(key):
            raise UnsupportedByRunner(f"RayCluster {rc['metadata']['name']}: spec.{key} is not played")
    if spec.get("enableInTreeAutoscaling"):
        raise UnsupportedByRunner(f"RayCluster {rc['metadata']['name']}: in-tree autoscaling is not played")


def _has_mount_at(container: Mapping[str, Any], path: str) -> bool:
    return any(m.get("mountPath") == path for m in container.get("volumeMounts") or [])


def _build_pod(
    rc: Mapping[str, Any],
    template: Obj,
    node_type: str,
    params: dict[str, str],
    port: str,
    fqdn: str,
    config: KubeRayConfig,
) -> Obj:
    """common.BuildPod (RayCluster creator, autoscaling off) + SetControllerReference."""
    spec = template.setdefault("spec", {})
    containers = spec["containers"]
    ray = containers[K.RAY_CONTAINER_INDEX]
    if K.PLASMA_DIRECTORY_PARAM not in params and not _has_mount_at(ray, K.SHARED_MEMORY_MOUNT_PATH):
        # addEmptyDir: a memory emptyDir sized by the Ray container's memory limit (else request).
        volumes = spec.setdefault("volumes", [])
        if not any(v.get("name") == K.SHARED_MEMORY_VOLUME_NAME for v in volumes):
            resources = ray.get("resources") or {}
            size = (resources.get("limits") or {}).get("memory") or (resources.get("requests") or {}).get(
                "memory"
            )
            empty: Obj = {"medium": "Memory"}
            if size is not None:
                empty["sizeLimit"] = size
            volumes.append({"name": K.SHARED_MEMORY_VOLUME_NAME, "emptyDir": empty})
        ray.setdefault("volumeMounts", []).append(
            {"mountPath": K.SHARED_MEMORY_MOUNT_PATH, "name": K.SHARED_MEMORY_VOLUME_NAME}
        )
    cmd = "".join(f" {c} " for c in ray.get("command") or []) + "".join(
        f" {a} " for a in ray.get("args") or []
    )
    ray_start = generate_ray_start_command(node_type, params, ray.get("resources") or {})
    overwrite = (template.get("metadata") or {}).get("annotations", {}).get(
        K.OVERWRITE_CONTAINER_CMD_ANNOTATION, ""
    ).lower() == "true"
    if not overwrite and "ray start" not in cmd:
        generated = f"ulimit -n 65536; {ray_start}"
        ray["command"] = ["/bin/bash", "-c", "--"]  # utils.GetContainerCommand (ENABLE_LOGIN_SHELL unset)
        ray["args"] = [f"{cmd} && {generated}" if cmd else generated]
    for init in spec.get("initContainers") or []:
        env = init.setdefault("env", [])
        env.append({"name": K.FQ_RAY_IP, "value": fqdn})
        env.append({"name": K.RAY_IP, "value": fqdn.split(".")[0]})
    set_container_env(ray, node_type, fqdn, port, ray_start)
    if config.probes_injection:
        init_probes(ray, node_type, params, str((rc.get("spec") or {}).get("rayVersion") or ""))
    meta = rc["metadata"]
    pod_meta = template.setdefault("metadata", {})
    pod_meta["ownerReferences"] = [
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "name": meta["name"],
            "uid": meta.get("uid", ""),
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec}


def _add_metrics_port(container: Obj) -> None:
    ports = container.setdefault("ports", [])
    if not any(p.get("name") == K.METRICS_PORT_NAME for p in ports):
        ports.append({"name": K.METRICS_PORT_NAME, "containerPort": K.DEFAULT_METRICS_PORT})


def spec_hash(rc: Mapping[str, Any]) -> str:
    """Stands in for utils.GenerateHashWithoutReplicasAndWorkersToDelete (same inputs, not Go's bytes)."""
    spec = copy.deepcopy(dict(rc.get("spec") or {}))
    for group in spec.get("workerGroupSpecs") or []:
        group.pop("replicas", None)
        group.pop("minReplicas", None)
        group.pop("maxReplicas", None)
        group.pop("scaleStrategy", None)
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def head_pod(rc: Mapping[str, Any], config: KubeRayConfig = DEFAULT_CONFIG) -> Obj:
    """buildHeadPod + createHeadPod's annotations: the Pod KubeRay posts (generateName set)."""
    _refuse_unsupported(rc)
    meta, spec = rc["metadata"], rc.get("spec") or {}
    head = copy.deepcopy(spec["headGroupSpec"])
    template: Obj = head["template"]
    pod_meta = template.setdefault("metadata", {})
    pod_meta.pop("name", None)
    pod_meta["generateName"] = pod_name_prefix(meta["name"], K.HEAD_NODE)
    pod_meta["namespace"] = meta["namespace"]
    params: dict[str, str] = {k: str(v) for k, v in (head.get("rayStartParams") or {}).items()}
    update_params_resources(params, head.get("resources"))
    update_params_labels(params, head.get("labels"))
    merged = {**(pod_meta.get("labels") or {}), **(head.get("labels") or {})}
    pod_meta["labels"] = label_pod(K.HEAD_NODE, meta["name"], K.HEAD_GROUP_LABEL_VALUE, merged)
    port = head_port(params)
    set_missing_ray_start_params(params, K.HEAD_NODE, port, "")
    annotations = pod_meta.setdefault("annotations", {})
    annotations[K.FT_ENABLED_ANNOTATION] = "false"
    annotations["ray.io/upgrade-strategy-recreate-hash"] = spec_hash(rc)
    annotations["ray.io/kuberay-version"] = K.KUBERAY_VERSION
    _add_metrics_port(template["spec"]["containers"][K.RAY_CONTAINER_INDEX])
    return _build_pod(rc, template, K.HEAD_NODE, params, port, fqdn_ray_ip(rc), config)


_FAQ = (
    "For troubleshooting, refer to the FAQ at "
    "https://docs.ray.io/en/master/cluster/kubernetes/troubleshooting.html."
)


def wait_gcs_ready_container(ray: Mapping[str, Any], fqdn: str, port: str) -> Obj:
    """The init container DefaultWorkerPodTemplate injects (ENABLE_INIT_CONTAINER_INJECTION default)."""
    # The script is KubeRay's, tabs included.
    script = f"""
					SECONDS=0
					while true; do
						if (( SECONDS <= 120 )); then
							if ray health-check --address {fqdn}:{port} > /dev/null 2>&1; then
								echo "GCS is ready."
								break
							fi
							echo "$SECONDS seconds elapsed: Waiting for GCS to be ready."
						else
							if ray health-check --address {fqdn}:{port}; then
								echo "GCS is ready. Any error messages above can be safely ignored."
								break
							fi
							echo "$SECONDS seconds elapsed: Still waiting for GCS to be ready. {_FAQ}"
						fi
						sleep 5
					done
				"""
    init: Obj = {
        "name": K.WAIT_GCS_READY_CONTAINER,
        "image": ray.get("image"),
        "command": ["/bin/bash", "-c", "--"],
        "args": [script],
        "env": copy.deepcopy(ray.get("env") or []),
        "volumeMounts": copy.deepcopy(ray.get("volumeMounts") or []),
        "resources": {
            "limits": {"cpu": "200m", "memory": "256Mi"},
            "requests": {"cpu": "200m", "memory": "256Mi"},
        },
    }
    if ray.get("imagePullPolicy"):
        init["imagePullPolicy"] = ray["imagePullPolicy"]
    if ray.get("securityContext") is not None:
        init["securityContext"] = copy.deepcopy(ray["securityContext"])
    return init


def worker_pod(
    rc: Mapping[str, Any],
    group: Mapping[str, Any],
    replica_name: str,
    replica_index: int,
    host_index: int,
    config: KubeRayConfig = DEFAULT_CONFIG,
) -> Obj:
    """buildWorkerPod (DefaultWorkerPodTemplate + BuildPod) for one host of one replica."""
    _refuse_unsupported(rc)
    meta, spec = rc["metadata"], rc.get("spec") or {}
    worker = copy.deepcopy(dict(group))
    template: Obj = worker["template"]
    pod_meta = template.setdefault("metadata", {})
    pod_meta["generateName"] = pod_name_prefix(f"{meta['name']}-{worker['groupName']}", K.WORKER_NODE)
    pod_meta.pop("name", None)
    pod_meta["namespace"] = meta["namespace"]
    head_params = {
        k: str(v) for k, v in ((spec.get("headGroupSpec") or {}).get("rayStartParams") or {}).items()
    }
    port = head_port(head_params)
    fqdn = fqdn_ray_ip(rc)
    pod_spec = template.setdefault("spec", {})
    ray = pod_spec["containers"][K.RAY_CONTAINER_INDEX]
    if config.init_container_injection:
        pod_spec.setdefault("initContainers", []).append(wait_gcs_ready_container(ray, fqdn, port))
    params: dict[str, str] = {k: str(v) for k, v in (worker.get("rayStartParams") or {}).items()}
    update_params_resources(params, worker.get("resources"))
    update_params_labels(params, worker.get("labels"))
    merged = {**(pod_meta.get("labels") or {}), **(worker.get("labels") or {})}
    labels = label_pod(K.WORKER_NODE, meta["name"], worker["groupName"], merged)
    labels[K.RAY_WORKER_REPLICA_INDEX_LABEL] = str(replica_index)
    if int(worker.get("numOfHosts") or 1) > 1:
        labels[K.RAY_WORKER_REPLICA_NAME_LABEL] = replica_name
        labels[K.RAY_HOST_INDEX_LABEL] = str(host_index)
    pod_meta["labels"] = labels
    set_missing_ray_start_params(params, K.WORKER_NODE, port, fqdn)
    _add_metrics_port(ray)
    return _build_pod(rc, template, K.WORKER_NODE, params, port, fqdn, config)
