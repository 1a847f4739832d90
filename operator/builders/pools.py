"""The two MoEPools of a MoEDeployment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moeplane.api.enums import EplbMode, Role, WeightsFormat
from moeplane.api.layout import GroupLayout
from moeplane.api.podtemplate import ModelStorage
from moeplane.api.spec import API_VERSION, MoEDeployment, MoEPoolSpec
from moeplane.operator import names


def desired_pool_replicas(deployment_replicas: int, live_pool: Mapping[str, Any] | None) -> int:
    """EP groups a pool should run.

    A pool is scaled through its own `/scale` subresource (the planner, an HPA, `kubectl scale`);
    the deployment's `replicas` reaches the pool only when it was changed since it was last
    given to the pool, so that a resync never undoes a scale.
    """
    if live_pool is None:
        return deployment_replicas
    annotations = (live_pool.get("metadata") or {}).get("annotations") or {}
    given = annotations.get(names.DEPLOYMENT_REPLICAS)
    if given is None or given != str(deployment_replicas):
        return deployment_replicas
    return int((live_pool.get("spec") or {}).get("replicas", deployment_replicas))


def model_storage(deployment: MoEDeployment) -> ModelStorage:
    """The model locations a deployment's pods mount (random weights read none)."""
    model = deployment.spec.model
    weights = model.weights.uri if model.weights.format is WeightsFormat.SAFETENSORS else None
    return ModelStorage(weights=weights, tokenizer=model.tokenizer, hf_cache=model.hf_cache)


def build_pool(
    deployment: MoEDeployment, name: str, namespace: str, role: Role, layout: GroupLayout, replicas: int
) -> dict[str, Any]:
    """The MoEPool of `role`. `layout` is the runtime document's for the pool (`resolve_runtime`):
    it shapes the pool's pods and reaches its runtime from here, and nowhere else."""
    spec = deployment.spec
    pool = spec.pool(role)
    pool_spec = MoEPoolSpec(
        role=role,
        deployment_name=name,
        replicas=replicas,
        layout=layout,
        image=pool.image or spec.image,
        gpu_resource_name=spec.hardware.gpu_resource_name,
        rdma=spec.hardware.rdma,
        resources=pool.resources,
        node_selector=pool.node_selector,
        tolerations=pool.tolerations,
        affinity=pool.affinity,
        topology_key=pool.topology_key,
        pod=pool.pod,
        storage=model_storage(deployment),
        rollout=spec.rollout,
        # Only a static pool reads it, and a change of it restarts the pool's workers.
        eplb_load_file=spec.eplb.load_file if spec.eplb.mode is EplbMode.STATIC else None,
    )
    pool_name = names.pool_name(name, role)
    return {
        "apiVersion": API_VERSION,
        "kind": "MoEPool",
        "metadata": {
            "name": pool_name,
            "namespace": namespace,
            "labels": names.pool_labels(name, pool_name, role),
            "annotations": {names.DEPLOYMENT_REPLICAS: str(pool.replicas)},
        },
        "spec": pool_spec.to_wire(),
    }
