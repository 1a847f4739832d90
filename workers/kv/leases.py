"""Leases on exported KV: the prefill side keeps a request's blocks until the decode side
acknowledges the transfer, or until the lease expires (a decode rank that died never acks).

Bookkeeping with an injected clock, safe to call from the engine's thread and the transport's
event loop at once; the transport calls `expire()` periodically and frees what it returns. A
lease never expires while a pull is streaming from it; the end of a pull renews it, so a client
gets a full lease period to ack.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from moeplane.workers.kv.errors import KVTransferError, TransferNotFound

T = TypeVar("T")


@dataclass
class Lease(Generic[T]):
    transfer_id: str
    item: T
    lease_s: float
    expires_at_s: float  # on the table's clock
    active_pulls: int = 0


class LeaseTable(Generic[T]):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._leases: dict[str, Lease[T]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, transfer_id: object) -> bool:
        return transfer_id in self._leases

    def items(self) -> list[tuple[str, T]]:
        with self._lock:
            return [(tid, lease.item) for tid, lease in self._leases.items()]

    def grant(self, transfer_id: str, item: T, lease_s: float) -> Lease[T]:
        if lease_s <= 0:
            raise KVTransferError(f"lease_s must be positive, got {lease_s}")
        with self._lock:
            if transfer_id in self._leases:
                raise KVTransferError(f"transfer {transfer_id!r} already holds a lease")
            lease = Lease(transfer_id, item, lease_s, self._clock() + lease_s)
            self._leases[transfer_id] = lease
            return lease

    def get(self, transfer_id: str) -> Lease[T]:
        lease = self._leases.get(transfer_id)
        if lease is None:
            raise TransferNotFound(f"no transfer {transfer_id!r}: unknown, acknowledged or expired")
        return lease

    def remaining_s(self, transfer_id: str) -> float:
        return max(0.0, self.get(transfer_id).expires_at_s - self._clock())

    def begin_pull(self, transfer_id: str) -> T:
        with self._lock:
            lease = self.get(transfer_id)
            lease.active_pulls += 1
            return lease.item

    def end_pull(self, transfer_id: str) -> None:
        with self._lock:
            lease = self._leases.get(transfer_id)
            if lease is not None:
                lease.active_pulls = max(0, lease.active_pulls - 1)
                lease.expires_at_s = self._clock() + lease.lease_s

    def release(self, transfer_id: str) -> T | None:
        """Drop the lease (on ack); returns its item, or None if it was already gone."""
        with self._lock:
            lease = self._leases.pop(transfer_id, None)
        return None if lease is None else lease.item

    def expire(self) -> list[tuple[str, T]]:
        """Drop and return every lease past its expiry with no pull in progress."""
        with self._lock:
            now = self._clock()
            gone = [
                tid
                for tid, lease in self._leases.items()
                if lease.expires_at_s <= now and not lease.active_pulls
            ]
            return [(tid, self._leases.pop(tid).item) for tid in gone]
