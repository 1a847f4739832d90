"""The environment and files the operator gives the processes in its pods, named once.

The operator's builders set them (`operator/builders/raycluster.py` for a pool's `moeplane pool`
sidecar, `operator/builders/frontend.py` for `moeplane frontend`), and the processes read them
(`workers/pool/settings.py`, `workers/frontend/main.py`). Secrets arrive only as references to the
deployment's Secret.
"""

from __future__ import annotations

from typing import Final

# ---- files ------------------------------------------------------------------------------------------
ENGINE_DIR: Final = "/etc/moeplane/engine"  # the deployment's engine ConfigMap, mounted read-only
ENGINE_KEY: Final = "engine.json"  # its one key: the runtime document (api/runtime.py)
ENGINE_PATH: Final = f"{ENGINE_DIR}/{ENGINE_KEY}"
EPLB_LOAD_DIR: Final = "/etc/moeplane/eplb-load"  # a static-EPLB configmap://NAME/KEY, at KEY

# ---- both the pool and the frontend ------------------------------------------------------------------
ENGINE_CONFIG_ENV: Final = "MOEPLANE_ENGINE_CONFIG"  # path of engine.json
REDIS_URL_ENV: Final = "MOEPLANE_REDIS_URL"  # the worker registry's Redis (from the Secret)
GRPC_TOKEN_ENV: Final = "MOEPLANE_GRPC_TOKEN"  # the workers' gRPC token (from the Secret; optional)

# ---- a pool's `moeplane pool` -----------------------------------------------------------------------
ROLE_ENV: Final = "MOEPLANE_ROLE"  # prefill or decode
POOL_ENV: Final = "MOEPLANE_POOL"  # the MoEPool's name
REVISION_ENV: Final = "MOEPLANE_REVISION"  # the RayCluster's revision (group ids stay unique in a rollout)
POOL_LAYOUT_ENV: Final = "MOEPLANE_POOL_LAYOUT"  # the MoEPool's spec.layout, as JSON (GroupLayout)
POD_IP_ENV: Final = "MOEPLANE_POD_IP"  # the address the groups advertise (optional)
EPLB_LOAD_FILE_ENV: Final = "MOEPLANE_EPLB_LOAD_FILE"  # where the pod sees spec.eplb.loadFile (static)
