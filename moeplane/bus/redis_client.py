"""The asyncio Redis client every frontend and registry component uses, with bounded timeouts.

Redis is a cache and a bus here: when it is away, callers must find out within a second and fall
back (cached registry, buffered metrics) rather than hang on the library's default 5 s timeouts
and retries.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def async_redis(url: str, timeout_s: float = 1.0) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        # One retry covers a connection the server closed while idle (e.g. after a restart).
        retry=Retry(NoBackoff(), retries=1),
        health_check_interval=0,
    )
