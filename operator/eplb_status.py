"""A pool's EPLB state for its status: the placement version it serves and the measured
balancedness, read from the EPLB store's Redis hash (`DeploymentKeys.placement(role)`, written by
workers/eplb/store.py). One HMGET per pool reconcile; torch-free.

Redis is a cache: when it cannot be read (down, slow, no key yet) the reading is empty and the
status keeps what it last showed, rather than the reconcile failing.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from moeplane.api.enums import Role
from moeplane.operator.status import EplbReading

from moeplane.bus.keys import BALANCEDNESS_FIELD, PLACEMENT_VERSION_FIELD, DeploymentKeys

log = logging.getLogger(__name__)


def parse_reading(version: bytes | str | None, balancedness: bytes | str | None) -> EplbReading:
    """The hash fields as the store writes them; a field that does not parse reads as absent."""

    def text(raw: bytes | str | None) -> str:
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    out_version: int | None = None
    out_balance: float | None = None
    if version is not None and text(version).isdigit():
        out_version = int(text(version))
    if balancedness is not None:
        try:
            value = float(text(balancedness))
        except ValueError:
            value = -1.0
        out_balance = value if 0.0 <= value <= 1.0 else None
    return EplbReading(placement_version=out_version, balancedness=out_balance)


class EplbReader:
    """Reads pools' EPLB state from the Redis at `redis_url` (one client, created on first use)."""

    def __init__(self, redis_url: str, timeout_s: float = 2.0) -> None:
        self._url = redis_url
        self._timeout_s = timeout_s
        self._client: aioredis.Redis | None = None

    async def read(self, namespace: str, deployment: str, role: Role) -> EplbReading | None:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s
            )
        key = DeploymentKeys(namespace, deployment).placement(role.value)
        try:
            version, balancedness = await asyncio.wait_for(
                self._client.hmget(key, [PLACEMENT_VERSION_FIELD, BALANCEDNESS_FIELD]), self._timeout_s
            )
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            log.debug("EPLB state of %s/%s %s unreadable: %s", namespace, deployment, role.value, exc)
            return None
        return parse_reading(version, balancedness)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
