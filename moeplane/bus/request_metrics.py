"""Per-request metrics on a Redis stream, capped with MAXLEN: the planner's view of the traffic.

Each finished request (served, failed, cancelled or timed out) becomes one stream entry whose
fields are `RequestRecord`'s, as strings. Writers never block the request path: `record()`
queues in memory and a background task flushes with pipelined XADDs. While Redis is away the
queue holds up to `max_buffered` records and then drops the oldest, counting them in
`num_dropped`, so an outage costs bounded memory and the newest data survives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moeplane.bus.keys import DeploymentKeys

log = logging.getLogger(__name__)

DEFAULT_MAXLEN = 100_000


class RequestStatus(StrEnum):
    OK = "ok"
    ERROR = "error"  # A worker group failed the request.
    CANCELLED = "cancelled"  # The client went away.
    TIMEOUT = "timeout"  # The server's request timeout ran out.
    REJECTED = "rejected"  # No capacity (503) or an invalid request after parsing (400).


class RequestRecord(BaseModel):
    """One request as the planner sees it. Latencies are None when they never happened."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: str
    model: str
    status: RequestStatus
    finish_reason: str | None = None
    isl_tokens: int = Field(ge=0, description="Prompt tokens.")
    osl_tokens: int = Field(ge=0, description="Output tokens.")
    queue_ms: float | None = Field(
        None, ge=0, description="Arrival to the start of prefill: the frontend's queue, then prefill's."
    )
    admission_queue_ms: float | None = Field(
        None, ge=0, description="Of queue_ms, the wait in the frontend's admission queue for KV capacity."
    )
    retries: int = Field(0, ge=0, description="Times the request moved to another group after a failure.")
    ttft_ms: float | None = Field(None, ge=0, description="Arrival to the first output token.")
    itl_ms: float | None = Field(None, ge=0, description="Mean gap between output tokens.")
    itl_max_ms: float | None = Field(None, ge=0, description="Largest gap between output tokens.")
    e2e_ms: float = Field(ge=0, description="Arrival to the last byte sent.")
    arrived_at_s: float = Field(ge=0, description="Unix time of arrival.")
    prefill_group: str | None = None
    decode_group: str | None = None

    def to_fields(self) -> dict[Any, Any]:
        """Stream fields: every set value as a string; None values are left out."""
        return {k: str(v) for k, v in self.model_dump(mode="json", exclude_none=True).items()}

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> RequestRecord:
        decoded = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        return cls.model_validate(decoded)


class RequestMetricsWriter:
    """Buffered, non-blocking XADD of `RequestRecord`s to `keys.request_metrics()`."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: DeploymentKeys,
        maxlen: int = DEFAULT_MAXLEN,
        max_buffered: int = 10_000,
        flush_interval_s: float = 0.2,
    ) -> None:
        if maxlen <= 0 or max_buffered <= 0:
            raise ValueError(f"maxlen ({maxlen}) and max_buffered ({max_buffered}) must be > 0")
        self.client = client
        self.key = keys.request_metrics()
        self.maxlen = maxlen
        self.flush_interval_s = flush_interval_s
        self._pending: deque[RequestRecord] = deque(maxlen=max_buffered)
        self.num_written = 0
        self.num_dropped = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopping = False
        self._flushing = asyncio.Lock()
        self._redis_down = False

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def record(self, rec: RequestRecord) -> None:
        if len(self._pending) == self._pending.maxlen:
            self.num_dropped += 1  # deque(maxlen) drops the oldest on append.
        self._pending.append(rec)
        self._wake.set()

    async def flush(self) -> int:
        """Write everything queued; on a Redis error keep it queued and return 0."""
        async with self._flushing:  # one flush at a time, or two would write the same records
            return await self._flush()

    async def _flush(self) -> int:
        batch = list(self._pending)
        if not batch:
            return 0
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for rec in batch:
                    # Approximate trimming (MAXLEN ~) lets Redis drop whole macro nodes: O(1).
                    pipe.xadd(self.key, rec.to_fields(), maxlen=self.maxlen, approximate=True)
                await pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            if not self._redis_down:  # once per outage
                log.warning("request metrics: Redis unavailable, queueing (at most %d): %s",
                            self._pending.maxlen, exc)
            self._redis_down = True
            return 0
        self._redis_down = False
        for rec in batch:
            # Records appended meanwhile stay; what was written leaves from the left (unless an
            # overflow during the write already pushed it out).
            if self._pending and self._pending[0] is rec:
                self._pending.popleft()
        self.num_written += len(batch)
        return len(batch)

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval_s * 5)
            self._wake.clear()
            await self.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.flush_interval_s)

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="moeplane-request-metrics")

    async def stop(self) -> None:
        """Stop the loop and make one last attempt to write what is queued.

        The loop is asked to finish rather than cancelled: redis-py does not reliably let a
        cancellation out of a pipeline that is mid-flight.
        """
        if self._task is not None:
            self._stopping = True
            self._stop.set()
            self._wake.set()
            await self._task
            self._task = None
        await self.flush()


async def read_request_records(
    client: aioredis.Redis, keys: DeploymentKeys, after_id: str = "0-0", count: int = 1000
) -> tuple[list[RequestRecord], str]:
    """Records after stream id `after_id` (exclusive), oldest first, and the id to resume from.

    Entries that do not parse (another version's fields) are skipped, not fatal.
    """
    entries = await client.xrange(keys.request_metrics(), min=f"({after_id}", count=count) or []
    records, last = [], after_id
    for entry_id, fields in entries:
        last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        try:
            records.append(RequestRecord.from_fields(fields or {}))
        except ValidationError as exc:
            log.debug("skipping request-metrics entry %s: %s", last, exc)
    return records, last
