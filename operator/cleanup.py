"""Deleting a MoEDeployment's Redis keys (the only reason the operator holds a finalizer)."""

from __future__ import annotations

import redis.asyncio as aioredis

from moeplane.bus.keys import DeploymentKeys

SCAN_BATCH = 500


async def delete_deployment_keys(
    redis_url: str, namespace: str, deployment: str, timeout_s: float = 5.0
) -> int:
    """UNLINK every key of the deployment (found with SCAN, never KEYS); returns how many."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(
            match=DeploymentKeys(namespace, deployment).pattern(), count=SCAN_BATCH
        ):
            batch.append(key)
            if len(batch) >= SCAN_BATCH:
                deleted += int(await client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(await client.unlink(*batch))
    finally:
        await client.aclose()
    return deleted
