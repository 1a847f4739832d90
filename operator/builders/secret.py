"""The per-deployment Secret: the shared token of the workers' gRPC services and the Redis URL.

Pods reference its keys with `secretKeyRef`, so neither value appears in a RayCluster,
Deployment or ConfigMap. The token is random, generated once when the Secret is first made, and
then always read back from the live Secret: a resync, or an operator restart, never rotates it
(running workers and frontends hold it). Nothing here logs a value.
"""

from __future__ import annotations

import base64
import binascii
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


def live_grpc_token(live: Mapping[str, Any] | None) -> str | None:
    """The token a live Secret holds, or None when there is none (or it is not valid base64)."""
    data = (live or {}).get("data") or {}
    encoded = data.get(GRPC_TOKEN_KEY)
    if not encoded:
        return None
    try:
        token = base64.b64decode(str(encoded), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return token or None


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


def secret_env(var: str, deployment: str, key: str) -> dict[str, Any]:
    """An env var read from the deployment's Secret (required: a pod without it must not start)."""
    return {
        "name": var,
        "valueFrom": {"secretKeyRef": {"name": names.deployment_secret(deployment), "key": key}},
    }
