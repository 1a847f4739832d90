"""KV transport on Mooncake's transfer engine (optional extra `moeplane[mooncake]`).

The bulk bytes move by a one-sided read from the prefill rank's registered memory into the decode
rank's registered memory: `tcp` in tests and on CPU hosts (the PyPI package
`mooncake-transfer-engine-non-cuda`), `rdma` in production. Leases, acks and the checksum stay on
moeplane's gRPC KV service (a `GrpcKVTransport` this transport runs beside the engine), so a decode
rank can always tell the prefill rank to free the blocks.

On offer, the payload is staged into one registered host buffer and its CRC computed; the decode
side reads it in one transfer, verifies the CRC, and acks. (With CUDA builds the cache tensors
themselves can be registered instead, which removes the staging copy.) The engine needs the
`libibverbs` shared library even for `tcp`; where it or the package is missing, `start()` raises
`MooncakeUnavailable` saying what to install.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any

import numpy as np
from moeplane.workers.grpc_security import GrpcSecurity, advertised_host
from moeplane.workers.kv.buffers import BufferSource, KVSink, KVSource
from moeplane.workers.kv.checksum import DEFAULT_CHECKSUM, ChecksumKind, checksum
from moeplane.workers.kv.errors import ChecksumMismatch, KVErrorKind, KVTransferError, TransferSizeMismatch
from moeplane.workers.kv.grpc_backend import GrpcKVTransport
from moeplane.workers.kv.layout import KVBackend, KVLayout, TransferHandle
from moeplane.workers.kv.transport import KVTransport, OnRelease, PullStats, ReleaseReason

log = logging.getLogger(__name__)

_COPY_BYTES = 1 << 22


class MooncakeUnavailable(KVTransferError):
    kind = KVErrorKind.UNAVAILABLE


def import_engine() -> Any:
    """The `TransferEngine` class, or MooncakeUnavailable with the reason and the fix."""
    try:
        from mooncake.engine import TransferEngine
    except ImportError as exc:
        raise MooncakeUnavailable(
            f"Mooncake's transfer engine cannot be imported ({exc}); install the extra "
            "`moeplane[mooncake]` (mooncake-transfer-engine-non-cuda on CPU hosts) and the system "
            "library libibverbs1"
        ) from None
    return TransferEngine


def _address_of(array: np.ndarray) -> int:
    return int(array.ctypes.data)


class MooncakeKVTransport(KVTransport):
    backend = KVBackend.MOONCAKE

    def __init__(
        self,
        host: str = "127.0.0.1",
        protocol: str = "tcp",
        device_name: str = "",
        advertise_host: str | None = None,
        security: GrpcSecurity | None = None,
        control_port: int = 0,
    ) -> None:
        self._host = advertised_host(host, advertise_host)
        self._protocol = protocol
        self._device_name = device_name
        self._control = GrpcKVTransport(host, control_port, security, advertise_host=advertise_host)
        self._engine: Any = None
        self._session = ""

    @property
    def address(self) -> str:
        return self._control.address

    @property
    def protocol(self) -> str:
        """Mooncake's transport: tcp, or rdma over `device_name`'s NICs."""
        return self._protocol

    @property
    def device_name(self) -> str:
        return self._device_name

    async def start(self) -> None:
        engine = import_engine()()
        status = engine.initialize(self._host, "P2PHANDSHAKE", self._protocol, self._device_name)
        if status != 0:
            raise MooncakeUnavailable(
                f"Mooncake initialize({self._host!r}, P2PHANDSHAKE, {self._protocol!r}, "
                f"{self._device_name!r}) returned {status}"
            )
        self._engine = engine
        self._session = f"{self._host}:{engine.get_rpc_port()}"
        await self._control.start()

    def offer(
        self, transfer_id: str, layout: KVLayout, source: KVSource, lease_s: float, on_release: OnRelease
    ) -> TransferHandle:
        if source.total_bytes != layout.total_bytes:
            raise TransferSizeMismatch(
                f"source holds {source.total_bytes} bytes but layout {layout} needs {layout.total_bytes}"
            )
        staging = np.empty(max(layout.total_bytes, 1), dtype=np.uint8)
        for offset in range(0, layout.total_bytes, _COPY_BYTES):
            n = min(_COPY_BYTES, layout.total_bytes - offset)
            staging[offset : offset + n] = np.frombuffer(source.read(offset, n), dtype=np.uint8)
        payload = staging[: layout.total_bytes]
        addr = _address_of(staging)
        if self._engine.register_memory(addr, staging.nbytes) != 0:
            raise MooncakeUnavailable(f"Mooncake could not register {staging.nbytes} bytes for {transfer_id}")

        def release(tid: str, reason: ReleaseReason) -> None:
            self._engine.unregister_memory(addr)
            on_release(tid, reason)

        handle = self._control.offer(transfer_id, layout, BufferSource(payload.data), lease_s, release)
        descriptor = {
            "session": self._session,
            "addr": addr,
            "checksum": checksum(payload.data, DEFAULT_CHECKSUM),
            "checksum_kind": int(DEFAULT_CHECKSUM),
        }
        # The lease's BufferSource views `staging`, keeping it alive (and registered) until release.
        return dataclasses.replace(handle, backend=self.backend, descriptor=json.dumps(descriptor).encode())

    async def pull(self, handle: TransferHandle, sink: KVSink, timeout_s: float = 60.0) -> PullStats:
        if sink.total_bytes != handle.layout.total_bytes:
            raise TransferSizeMismatch(
                f"sink holds {sink.total_bytes} bytes, the handle's layout {handle.layout.total_bytes}"
            )
        view = getattr(sink, "view", None)
        if not isinstance(view, memoryview):
            raise KVTransferError("the Mooncake backend reads into a contiguous sink (BufferSink)")
        try:
            desc = json.loads(handle.descriptor)
            session, remote = str(desc["session"]), int(desc["addr"])
            expected, kind = int(desc["checksum"]), ChecksumKind(int(desc["checksum_kind"]))
        except (ValueError, KeyError) as exc:
            raise TransferSizeMismatch(
                f"bad Mooncake descriptor in handle {handle.transfer_id}: {exc}"
            ) from None
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            stats = await asyncio.wait_for(
                self._read(session, remote, view, expected, kind, start), timeout_s
            )
        except TimeoutError:
            await self._control.ack(handle, success=False, error="timed out")
            raise KVTransferError(
                f"Mooncake read of {handle.transfer_id} took over {timeout_s}s", KVErrorKind.DEADLINE_EXCEEDED
            ) from None
        except KVTransferError as exc:
            await self._control.ack(handle, success=False, error=str(exc))
            raise
        except asyncio.CancelledError:
            await asyncio.shield(self._control.ack(handle, success=False, error="cancelled"))
            raise
        await self._control.ack(handle, success=True)
        return stats

    async def _read(
        self, session: str, remote: int, view: memoryview, expected: int, kind: ChecksumKind, start: float
    ) -> PullStats:
        n = len(view)
        if n:
            dst = np.frombuffer(view, dtype=np.uint8)
            addr = _address_of(dst)
            if self._engine.register_memory(addr, n) != 0:
                raise MooncakeUnavailable(f"Mooncake could not register the {n}-byte destination")
            try:
                status = await asyncio.to_thread(self._engine.transfer_sync_read, session, addr, remote, n)
            finally:
                self._engine.unregister_memory(addr)
            if status != 0:
                raise KVTransferError(
                    f"Mooncake read of {n} bytes from {session} failed ({status})", KVErrorKind.UNAVAILABLE
                )
        got = checksum(view, kind)
        if got != expected:
            raise ChecksumMismatch(f"Mooncake payload {kind.name} {got:#010x} != sender's {expected:#010x}")
        return PullStats(n, 1, asyncio.get_running_loop().time() - start, got)

    def release(self, transfer_id: str, reason: ReleaseReason) -> bool:
        return self._control.release(transfer_id, reason)

    def expire(self) -> list[str]:
        return self._control.expire()

    @property
    def num_leases(self) -> int:
        return self._control.num_leases

    async def close(self) -> None:
        await self._control.close()
