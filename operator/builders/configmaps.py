"""The engine ConfigMap of a deployment: its runtime document (`api/runtime.py`), in wire form.

The document is the deployment-wide part: each pool's layout travels with its MoEPool
(`spec.layout`) instead, which shapes the pool's pods and reaches its `moeplane pool` in
`MOEPLANE_POOL_LAYOUT`. The SLA and planner settings are not in it, so changing them never
touches a worker. A pool starts on `Placement.identity` (or its static-EPLB load file's
placement), so no placement ConfigMap is needed.
"""

from __future__ import annotations

import json
from typing import Any

from moeplane.api.podcontract import ENGINE_KEY
from moeplane.api.runtime import EngineDocument
from moeplane.operator import names

__all__ = ["ENGINE_KEY", "build_engine_configmap", "engine_json"]


def engine_json(document: EngineDocument) -> str:
    """engine.json: the document without its pools' layouts (the MoEPools carry those)."""
    return json.dumps(document.without_pools().to_wire(), indent=1, sort_keys=True)


def build_engine_configmap(document: EngineDocument) -> dict[str, Any]:
    name = document.deployment
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.engine_configmap(name),
            "namespace": document.namespace,
            "labels": names.deployment_labels(name, "engine-config"),
        },
        "data": {ENGINE_KEY: engine_json(document)},
    }
