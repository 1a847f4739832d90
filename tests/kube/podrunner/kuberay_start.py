"""The `ray start` command KubeRay generates, and the names it uses (pure), ported from
ray-project/kuberay v1.6.2: ray-operator/controllers/ray/common/pod.go (`setMissingRayStartParams`,
`generateRayStartCommand`, `addWellKnownAcceleratorResources`, `convertParamMap`,
`updateRayStartParamsResources`, `updateRayStartParamsLabels`, `GetHeadPort`) and
ray-operator/controllers/ray/utils/util.go (`PodName`, `CheckLabel`, `GenerateHeadServiceName`,
`GenerateFQDNServiceName`) and utils/resources.go (`IsGPUResourceKey`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from tests.kube.podrunner import kuberay_api as K
from tests.kube.podrunner.quantity import is_zero, parse_quantity, value


# ---- names ------------------------------------------------------------------------------------------
def pod_name_prefix(prefix: str, node_type: str) -> str:
    """utils.PodName(prefix, nodeType, isGenerateName=true)."""
    return f"{prefix[:50]}-{node_type}-".lower()


def check_label(value_: str) -> str:
    """utils.CheckLabel: at most 63 characters (keeping the tail), not starting with punctuation."""
    if len(value_) > 63:
        value_ = value_[len(value_) - 63 :]
    if value_ and not value_[0].isalnum():
        value_ = "r" + value_[1:]
    return value_


def head_service_name(rc: Mapping[str, Any]) -> str:
    """utils.GenerateHeadServiceName for a RayCluster: `headService.metadata.name` or <name>-head-svc."""
    custom = ((rc.get("spec") or {}).get("headGroupSpec") or {}).get("headService") or {}
    name = (custom.get("metadata") or {}).get("name")
    return str(name) if name else f"{rc['metadata']['name']}-{K.HEAD_SERVICE_SUFFIX}"


def fqdn_ray_ip(rc: Mapping[str, Any]) -> str:
    """utils.GenerateFQDNServiceName: <head-svc>.<ns>.svc.cluster.local."""
    return f"{head_service_name(rc)}.{rc['metadata']['namespace']}.svc.{K.DEFAULT_DOMAIN_NAME}"


def head_port(head_params: Mapping[str, str]) -> str:
    """common.GetHeadPort."""
    return str(head_params.get("port", K.DEFAULT_GCS_SERVER_PORT))


# ---- ray start ------------------------------------------------------------------------------------
def convert_param_map(params: Mapping[str, str]) -> str:
    """common.convertParamMap: sorted ` --key=value `, booleans as bare flags (true) or nothing."""
    out = []
    for key in sorted(params):
        arg = str(params[key])
        if arg.lower() in ("true", "false") and key not in ("log-color", "include-dashboard"):
            if arg.lower() == "true":
                out.append(f" --{key} ")
        else:
            out.append(f" --{key}={arg} ")
    return "".join(out)


def _is_gpu_key(key: str) -> bool:
    """utils.IsGPUResourceKey."""
    return key.endswith("gpu") or re.search(r"nvidia\.com/mig-\d+g\.\d+gb$", key) is not None


# common/pod.go: customAcceleratorToRayResourceMap.
_CUSTOM_ACCELERATORS = {"aws.amazon.com/neuroncore": "neuron_cores", "google.com/tpu": "TPU"}


def _add_accelerators(params: dict[str, str], limits: Mapping[str, Any]) -> None:
    """common.addWellKnownAcceleratorResources: num-gpus, and the first custom accelerator."""
    if not limits:
        return
    raw = params.get("resources", "").strip("'\"` ")
    resources: dict[str, float] = json.loads(raw) if raw else {}
    added = any(name in resources for name in _CUSTOM_ACCELERATORS.values())
    for key in sorted(limits):
        if "num-gpus" not in params and _is_gpu_key(key) and not is_zero(limits[key]):
            params["num-gpus"] = str(value(limits[key]))
        if not added and key in _CUSTOM_ACCELERATORS and not is_zero(limits[key]):
            name = _CUSTOM_ACCELERATORS[key]
            if name not in resources:
                resources[name] = float(parse_quantity(limits[key]))
                params["resources"] = f"'{_go_json(resources)}'"
            added = True


def _go_json(resources: Mapping[str, float]) -> str:
    """encoding/json of a map[string]float64: sorted keys, integral floats without a fraction."""
    parts = []
    for key in sorted(resources):
        num = resources[key]
        parts.append(f"{json.dumps(key)}:{int(num) if float(num).is_integer() else num}")
    return "{" + ",".join(parts) + "}"


def generate_ray_start_command(node_type: str, params: dict[str, str], resources: Mapping[str, Any]) -> str:
    """common.generateRayStartCommand (fills num-cpus, memory, num-gpus from the container)."""
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    if "num-cpus" not in params:
        if not is_zero(limits.get("cpu")):
            params["num-cpus"] = str(value(limits["cpu"]))
        elif not is_zero(requests.get("cpu")):
            params["num-cpus"] = str(value(requests["cpu"]))
    if "memory" not in params and not is_zero(limits.get("memory")):
        params["memory"] = str(value(limits["memory"]))
    _add_accelerators(params, limits)
    if node_type == K.HEAD_NODE:
        return f"ray start --head {convert_param_map(params)}"
    return f"ray start {convert_param_map(params)}"


def set_missing_ray_start_params(
    params: dict[str, str], node_type: str, port: str, fqdn: str
) -> dict[str, str]:
    """common.setMissingRayStartParams."""
    if node_type == K.WORKER_NODE and "address" not in params:
        params["address"] = f"{fqdn}:{port}"
    if node_type == K.HEAD_NODE and "dashboard-host" not in params:
        params["dashboard-host"] = "0.0.0.0"
    params.setdefault("metrics-export-port", str(K.DEFAULT_METRICS_PORT))
    params["block"] = "true"
    params.setdefault("dashboard-agent-listen-port", str(K.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT))
    return params


def update_params_resources(params: dict[str, str], resources: Mapping[str, str] | None) -> None:
    """common.updateRayStartParamsResources (the group's top-level `resources`)."""
    if not resources:
        return
    custom: dict[str, float] = {}
    for name, quantity in resources.items():
        lowered = name.lower()
        if lowered == "cpu":
            params["num-cpus"] = str(value(quantity))
        elif lowered == "memory":
            params["memory"] = str(value(quantity))
        elif _is_gpu_key(lowered):
            params["num-gpus"] = str(value(quantity))
        else:
            custom[name] = float(value(quantity))
    if custom:
        params["resources"] = f"'{_go_json(custom)}'"


def update_params_labels(params: dict[str, str], labels: Mapping[str, str] | None) -> None:
    """common.updateRayStartParamsLabels."""
    if labels:
        params["labels"] = ",".join(f"{k}={labels[k]}" for k in sorted(labels))
