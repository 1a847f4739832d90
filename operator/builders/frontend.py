"""The per-deployment frontend (the OpenAI-compatible API) and the per-pool headless Service."""

from __future__ import annotations

import math
from typing import Any

from moeplane.api import podcontract as pc
from moeplane.api.enums import Role
from moeplane.api.spec import MoEDeployment
from moeplane.operator import names
from moeplane.operator.builders import podparts
from moeplane.operator.builders.pools import model_storage
from moeplane.operator.builders.secret import GRPC_TOKEN_KEY, REDIS_URL_KEY, secret_env
from moeplane.operator.builders.storage import model_mounts
from moeplane.operator.config import OperatorConfig

FRONTEND_CONTAINER = "frontend"
FRONTEND_COMPONENT = "frontend"


def build_frontend_deployment(
    deployment: MoEDeployment, name: str, namespace: str, config: OperatorConfig
) -> dict[str, Any]:
    spec = deployment.spec
    pod = spec.frontend.pod
    labels = names.deployment_labels(name, FRONTEND_COMPONENT)
    selector = {
        names.DEPLOYMENT_LABEL: labels[names.DEPLOYMENT_LABEL],
        names.APP_COMPONENT: FRONTEND_COMPONENT,
    }
    image = spec.frontend.image or spec.image or config.image
    security = podparts.container_security_context(pod)
    # The frontend tokenizes: it mounts the tokenizer (or the weights' location) like the pools do.
    model = model_mounts(
        model_storage(deployment),
        light=True,
        image=image,
        fetch_env=podparts.user_env(pod),
        security_context=security,
        resources=config.fetch_resources,
    )
    # What `moeplane frontend` reads (workers/frontend/main.py); secrets by reference only.
    env: list[dict[str, Any]] = [
        {"name": pc.ENGINE_CONFIG_ENV, "value": pc.ENGINE_PATH},
        secret_env(pc.GRPC_TOKEN_ENV, name, GRPC_TOKEN_KEY),
    ]
    if config.redis_url:
        env.append(secret_env(pc.REDIS_URL_ENV, name, REDIS_URL_KEY))
    container: dict[str, Any] = {
        "name": FRONTEND_CONTAINER,
        "image": image,
        "args": [
            "frontend", "--host", "0.0.0.0", "--port", str(config.frontend_port),
            "--shutdown-delay", f"{config.frontend_shutdown_delay_s:g}",
            "--drain-timeout", f"{config.frontend_drain_timeout_s:g}",
        ],
        "env": [*env, *model.env, *podparts.user_env(pod)],
        "ports": [{"containerPort": config.frontend_port, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
        "resources": podparts.merge_resources(config.frontend_resources, spec.frontend.resources),
        "securityContext": security,
        "volumeMounts": [
            {"name": pc.ENGINE_VOLUME, "mountPath": pc.ENGINE_DIR, "readOnly": True},
            *model.mounts,
            *podparts.user_mounts(pod),
        ],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [
            {"name": pc.ENGINE_VOLUME, "configMap": {"name": names.engine_configmap(name)}},
            *model.volumes,
            *podparts.user_volumes(pod),
        ],
        **podparts.pod_fields(config, pod),
        # The shutdown delay and the drain, and a margin for the process to exit.
        "terminationGracePeriodSeconds": math.ceil(
            config.frontend_shutdown_delay_s + config.frontend_drain_timeout_s + 5
        ),
    }
    if model.init_containers:
        pod_spec["initContainers"] = model.init_containers
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": names.frontend(name), "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": spec.frontend.replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": podparts.pod_metadata(labels, pod, {}), "spec": pod_spec},
        },
    }


def build_frontend_service(name: str, namespace: str, config: OperatorConfig) -> dict[str, Any]:
    labels = names.deployment_labels(name, FRONTEND_COMPONENT)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": names.frontend(name), "namespace": namespace, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "selector": {
                names.DEPLOYMENT_LABEL: labels[names.DEPLOYMENT_LABEL],
                names.APP_COMPONENT: FRONTEND_COMPONENT,
            },
            "ports": [
                {"name": "http", "port": config.frontend_port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_worker_service(deployment: str, pool_name: str, namespace: str, role: Role) -> dict[str, Any]:
    """Headless: one DNS record per worker pod. No ports: the ranks' KV services and the groups'
    control services listen on ephemeral ports, advertised with the pod IP in the Redis registry
    (a fixed port here would name nothing that listens)."""
    labels = names.pool_labels(deployment, pool_name, role)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": names.worker_service(pool_name), "namespace": namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            # Workers register in Redis while still warming up; their addresses must resolve then.
            "publishNotReadyAddresses": True,
            "selector": {names.POOL_LABEL: labels[names.POOL_LABEL], names.RAY_NODE_TYPE: "worker"},
        },
    }
