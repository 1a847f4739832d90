"""The engine ConfigMap of a deployment and the initial-placement ConfigMap of a pool."""

from __future__ import annotations

import json
from typing import Any

from moeplane.api.enums import Role
from moeplane.api.layout import DeploymentLayout, GroupLayout
from moeplane.api.spec import MoEDeployment, MoEPoolSpec
from moeplane.operator import names

from moeplane.bus.keys import DeploymentKeys

ENGINE_KEY = "engine.json"
PLACEMENT_KEY = "placement.json"


def engine_config(
    deployment: MoEDeployment, name: str, namespace: str, layout: DeploymentLayout
) -> dict[str, Any]:
    """What every worker of the deployment needs to start: the resolved model, hardware, both
    pools' group shapes, EPLB and KV transfer. The SLA and planner settings are not in it, so
    changing them never touches a worker."""
    spec = deployment.spec
    return {
        "deployment": name,
        "namespace": namespace,
        "model": {
            "architecture": spec.model.resolve_arch().to_wire(),
            "weights": spec.model.weights.to_wire(),
            "tokenizer": spec.model.tokenizer,
            "servedModelName": spec.model.served_model_name or name,
        },
        "hardware": spec.hardware.figures().to_wire(),
        "pools": {role.value: layout.pool(role).group.to_wire() for role in Role},
        "eplb": spec.eplb.to_wire(),
        "kvTransfer": spec.kv_transfer.to_wire(),
        "redisKeyPrefix": DeploymentKeys(namespace, name).prefix,
    }


def build_engine_configmap(
    deployment: MoEDeployment, name: str, namespace: str, layout: DeploymentLayout
) -> dict[str, Any]:
    config = engine_config(deployment, name, namespace, layout)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.engine_configmap(name),
            "namespace": namespace,
            "labels": names.deployment_labels(name, "engine-config"),
        },
        "data": {ENGINE_KEY: json.dumps(config, indent=1, sort_keys=True)},
    }


def initial_placement(layout: GroupLayout, num_layers: int, num_logical: int) -> dict[str, Any]:
    """Slot r holds expert r % E in every layer (`Placement.identity`): no rebalancing yet.

    Every layer starts alike, so one row is stored with the layer count; a worker expands it to
    the [layers, slots] `phy2log` map (`Placement.from_phy2log`). A static-EPLB pool starts on its
    load file's placement instead, which `moeplane pool` computes in the pod (the operator never
    reads the load file, which may be a ConfigMap it only mounts).
    """
    slots = layout.expert_slots
    return {
        "version": 0,
        "numLayers": num_layers,
        "numLogicalExperts": num_logical,
        "numPhysicalSlots": slots,
        "numRanks": layout.expert_parallel,
        "slotsPerRank": layout.routed_experts_per_gpu,
        "phy2logRow": [slot % num_logical for slot in range(slots)],
    }


def build_placement_configmap(
    pool: MoEPoolSpec,
    pool_name: str,
    namespace: str,
    labels: dict[str, str],
    num_moe_layers: int,
    num_routed_experts: int,
) -> dict[str, Any]:
    placement = initial_placement(pool.layout, num_moe_layers, num_routed_experts)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": names.placement_configmap(pool_name), "namespace": namespace, "labels": labels},
        "data": {PLACEMENT_KEY: json.dumps(placement, separators=(",", ":"))},
    }
