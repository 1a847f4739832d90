"""The per-deployment Secret: the shared token of the workers' gRPC services and the Redis URL.

Pods reference its keys with `secretKeyRef`, so neither value appears in a RayCluster,
Deployment or ConfigMap. The token is random, generated once when the Secret is first made. The
operator never reads a Secret back: once it exists, it is patched with `secret_patch`, which names
everything but the token, so a resync or an operator restart never rotates it (running workers and
frontends hold it). Nothing here logs a value.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import Any

from moeplane.operator import names

GRPC_TOKEN_KEY = "grpc-token"
REDIS_URL_KEY = "redis-url"
TOKEN_BYTES = 32  # 256 random bits, url-safe base64 (43 characters)


def new_grpc_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def build_deployment_secret(
    deployment: str, namespace: str, grpc_token: str, redis_url: str | None
) -> dict[str, Any]:
    """`data` is base64 as the API server returns it (`stringData` is write-only and would never
    compare equal to the live object)."""
    if not grpc_token:
        raise ValueError("grpc_token must not be empty")
    data = {GRPC_TOKEN_KEY: _b64(grpc_token)}
    if redis_url:
        data[REDIS_URL_KEY] = _b64(redis_url)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": names.deployment_secret(deployment),
            "namespace": namespace,
            "labels": names.deployment_labels(deployment, "secret"),
        },
        "type": "Opaque",
        "data": data,
    }


def secret_patch(desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that brings an existing Secret to `desired` without touching its token: its
    labels, annotations and owner, and the Redis URL (set, or removed when there is none)."""
    meta = desired["metadata"]
    patch_meta = {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta}
    data = desired.get("data") or {}
    return {"metadata": patch_meta, "data": {REDIS_URL_KEY: data.get(REDIS_URL_KEY)}}


def secret_env(var: str, deployment: str, key: str) -> dict[str, Any]:
    """An env var read from the deployment's Secret (required: a pod without it must not start)."""
    return {
        "name": var,
        "valueFrom": {"secretKeyRef": {"name": names.deployment_secret(deployment), "key": key}},
    }
