"""The Services KubeRay creates for a RayCluster (pure), ported from ray-project/kuberay v1.6.2:
ray-operator/controllers/ray/common/service.go (`BuildServiceForHeadPod`: headless by default, with
the head container's ports; `BuildHeadlessServiceForRayCluster` for multi-host worker groups).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.kube.podrunner import kuberay_api as K
from tests.kube.podrunner.kuberay_start import check_label, head_service_name

Obj = dict[str, Any]


def head_service(rc: Mapping[str, Any]) -> Obj:
    """common.BuildServiceForHeadPod: headless for a ClusterIP head (as ENABLE_RAY_HEAD_CLUSTER_IP_SERVICE
    is unset)."""
    meta, spec = rc["metadata"], rc.get("spec") or {}
    head = spec.get("headGroupSpec") or {}
    name = meta["name"]
    selector = {
        K.RAY_CLUSTER_LABEL: name,
        K.RAY_NODE_TYPE_LABEL: K.HEAD_NODE,
        K.RAY_ID_LABEL: check_label(f"{name}-{K.HEAD_NODE}"),
        K.APP_NAME_LABEL: K.APPLICATION_NAME,
        K.CREATED_BY_LABEL: K.COMPONENT_NAME,
    }
    template_labels = ((head.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if K.APP_NAME_LABEL in template_labels:
        selector[K.APP_NAME_LABEL] = template_labels[K.APP_NAME_LABEL]
    container = (head.get("template") or {}).get("spec", {}).get("containers", [{}])[K.RAY_CONTAINER_INDEX]
    ports = {
        str(p.get("name") or f"{p['containerPort']}-port"): int(p["containerPort"])
        for p in container.get("ports") or []
    }
    if not ports:
        ports = {
            K.CLIENT_PORT_NAME: K.DEFAULT_CLIENT_PORT,
            K.GCS_SERVER_PORT_NAME: K.DEFAULT_GCS_SERVER_PORT,
            K.DASHBOARD_PORT_NAME: K.DEFAULT_DASHBOARD_PORT,
            K.SERVING_PORT_NAME: K.DEFAULT_SERVING_PORT,
        }
    ports.setdefault(K.METRICS_PORT_NAME, K.DEFAULT_METRICS_PORT)
    service_type = head.get("serviceType") or "ClusterIP"
    svc_spec: Obj = {
        "selector": selector,
        "ports": [{"name": n, "port": p, "appProtocol": "tcp"} for n, p in sorted(ports.items())],
        "type": service_type,
    }
    if service_type == "ClusterIP":
        svc_spec["clusterIP"] = "None"
        svc_spec["publishNotReadyAddresses"] = True
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": head_service_name(rc),
            "namespace": meta["namespace"],
            "labels": dict(selector),
            "ownerReferences": [_owner(rc)],
        },
        "spec": svc_spec,
    }


def headless_worker_service(rc: Mapping[str, Any]) -> Obj | None:
    """common.BuildHeadlessServiceForRayCluster: only when a worker group has numOfHosts > 1."""
    groups = (rc.get("spec") or {}).get("workerGroupSpecs") or []
    if not any(int(g.get("numOfHosts") or 1) > 1 for g in groups):
        return None
    meta = rc["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"{meta['name']}-{K.HEADLESS_SERVICE_SUFFIX}",
            "namespace": meta["namespace"],
            "labels": {K.HEADLESS_SERVICE_LABEL: meta["name"]},
            "ownerReferences": [_owner(rc)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": {K.RAY_CLUSTER_LABEL: meta["name"], K.RAY_NODE_TYPE_LABEL: K.WORKER_NODE},
            "type": "ClusterIP",
            "publishNotReadyAddresses": True,
        },
    }


def _owner(rc: Mapping[str, Any]) -> Obj:
    meta = rc["metadata"]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }
