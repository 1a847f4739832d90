"""The `KVTransport` interface: one object per rank, serving the KV it exports (prefill) and pulling
the KV it imports (decode). gRPC (`grpc_backend`) is the default; Mooncake's transfer engine
(`mooncake_backend`) can replace it where RDMA is available.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from moeplane.workers.kv.buffers import KVSink, KVSource
from moeplane.workers.kv.layout import KVBackend, KVLayout, TransferHandle


class ReleaseReason(StrEnum):
    ACKED = "acked"  # the decode side has the KV
    FAILED = "failed"  # the decode side gave up and said so
    EXPIRED = "expired"  # nobody acknowledged within the lease
    CANCELLED = "cancelled"  # the request was cancelled on the prefill side after its hand-off
    CLOSED = "closed"  # the transport shut down


OnRelease = Callable[[str, ReleaseReason], None]


@dataclass(frozen=True)
class PullStats:
    num_bytes: int
    num_chunks: int
    seconds: float
    digest: int

    @property
    def gbps(self) -> float:
        return self.num_bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


class KVTransport(abc.ABC):
    backend: KVBackend

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """Where peers reach this transport (host:port); valid after `start()`."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    def offer(
        self, transfer_id: str, layout: KVLayout, source: KVSource, lease_s: float, on_release: OnRelease
    ) -> TransferHandle:
        """Serve `source` under a lease. `on_release` runs once: on ack, failure ack, expiry or close."""

    @abc.abstractmethod
    async def pull(self, handle: TransferHandle, sink: KVSink, timeout_s: float = 60.0) -> PullStats:
        """Copy the offered payload into `sink`, verify it, then acknowledge it (success or not).

        Raises KVTransferError; the sink may then hold partial data, which the caller discards.
        """

    @abc.abstractmethod
    def release(self, transfer_id: str, reason: ReleaseReason) -> bool:
        """Drop a lease now (its `on_release` runs); False if it was already gone."""

    @abc.abstractmethod
    def expire(self) -> list[str]:
        """Release leases past their expiry now; returns their transfer ids."""

    @property
    @abc.abstractmethod
    def num_leases(self) -> int: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop serving; every outstanding lease is released with CLOSED."""
