"""Pieces every pod the operator makes shares: secure defaults, image pull Secrets, and the user's
pod-template fields (`spec.*.pod`) merged in. Pure.

Secure defaults: the pod runs as the worker image's user (uid 1000, gid 100) with runAsNonRoot and
seccomp RuntimeDefault; every container drops all capabilities and cannot escalate privileges. That
is what Pod Security "restricted" asks of a pod, so the frontend and the pools' Ray pods pass it
(RDMA workers add IPC_LOCK, which no Pod Security level but "privileged" admits). A user's
securityContext fields are merged over these key by key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from moeplane.api.podtemplate import PodOverrides
from moeplane.operator.config import OperatorConfig

Obj = dict[str, Any]

WORKER_UID = 1000  # charts/images/worker.Dockerfile: USER 1000:100
WORKER_GID = 100


def pod_security_context(pod: PodOverrides | None) -> Obj:
    out: Obj = {
        "runAsNonRoot": True,
        "runAsUser": WORKER_UID,
        "runAsGroup": WORKER_GID,
        # Volumes the pods write (the Hugging Face cache) belong to the image's group; a volume whose
        # root already does is not walked again (a checkpoint claim holds many large files).
        "fsGroup": WORKER_GID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if pod is not None and pod.pod_security_context is not None:
        out.update(pod.pod_security_context.to_wire())
    return out


def container_security_context(pod: PodOverrides | None, add_capabilities: Sequence[str] = ()) -> Obj:
    out: Obj = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    if pod is not None and pod.security_context is not None:
        out.update(pod.security_context.to_wire())
    if add_capabilities:
        caps = dict(out.get("capabilities") or {})
        caps["add"] = sorted({*(caps.get("add") or ()), *add_capabilities})
        out["capabilities"] = caps
    return out


def image_pull_secrets(config: OperatorConfig, pod: PodOverrides | None) -> list[Obj]:
    """The operator's pull Secrets (the chart's imagePullSecrets), then the spec's, each once."""
    names = list(config.image_pull_secrets)
    if pod is not None:
        names += [s.name for s in pod.image_pull_secrets or ()]
    return [{"name": name} for name in dict.fromkeys(names)]


def user_env(pod: PodOverrides | None) -> list[Obj]:
    return [var.to_wire() for var in (pod.env or ())] if pod is not None else []


def user_volumes(pod: PodOverrides | None) -> list[Obj]:
    return [dict(v) for v in (pod.volumes or ())] if pod is not None else []


def user_mounts(pod: PodOverrides | None) -> list[Obj]:
    return [m.to_wire() for m in (pod.volume_mounts or ())] if pod is not None else []


def pod_metadata(labels: Mapping[str, str], pod: PodOverrides | None, annotations: Mapping[str, str]) -> Obj:
    """Template metadata: the user's labels under the operator's (which win; validation refuses
    clashes), the user's annotations and the operator's."""
    meta: Obj = {"labels": {**((pod.labels or {}) if pod else {}), **labels}}
    merged = {**((pod.annotations or {}) if pod else {}), **annotations}
    if merged:
        meta["annotations"] = merged
    return meta


def pod_fields(config: OperatorConfig, pod: PodOverrides | None, *, host_network_allowed: bool = True) -> Obj:
    """Pod-spec fields: pull Secrets, security context, priority, scheduler, host network."""
    out: Obj = {"securityContext": pod_security_context(pod)}
    pulls = image_pull_secrets(config, pod)
    if pulls:
        out["imagePullSecrets"] = pulls
    if pod is None:
        return out
    if pod.priority_class_name:
        out["priorityClassName"] = pod.priority_class_name
    if pod.scheduler_name:
        out["schedulerName"] = pod.scheduler_name
    if pod.host_network and host_network_allowed:
        out["hostNetwork"] = True
        # Without it a host-network pod resolves with the node's DNS and cannot find Services.
        out["dnsPolicy"] = "ClusterFirstWithHostNet"
    return out


def merge_resources(defaults: Mapping[str, Mapping[str, str]], user: Mapping[str, Any] | None) -> Obj:
    """The user's ResourceRequirements merged over the defaults, resource by resource."""
    user = user or {}
    out: Obj = {}
    for part in ("requests", "limits"):
        merged = {**(defaults.get(part) or {}), **(user.get(part) or {})}
        if merged:
            out[part] = merged
    if user.get("claims"):
        out["claims"] = list(user["claims"])
    return out


def env_values(pairs: Iterable[tuple[str, str]]) -> list[Obj]:
    return [{"name": name, "value": value} for name, value in pairs]
