"""The shape of one request's KV payload and the handle a decode rank pulls it with (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from moeplane.api.enums import KvTransferBackend as KVBackend
from moeplane.protos import kv_transfer_pb2 as pb
from moeplane.workers.kv.errors import TransferSizeMismatch

__all__ = ["KVBackend", "KVDtype", "KVLayout", "TransferHandle"]


class KVDtype(StrEnum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT8_E4M3 = "float8_e4m3fn"

    @property
    def element_bytes(self) -> int:
        return {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1}[self.value]

    def to_proto(self) -> pb.KVDtype:
        return _DTYPE_TO_PROTO[self]

    @classmethod
    def from_proto(cls, value: int) -> KVDtype:
        for dtype, number in _DTYPE_TO_PROTO.items():
            if number == value:
                return dtype
        raise TransferSizeMismatch(f"unknown KV dtype number {value}")


_DTYPE_TO_PROTO: dict[KVDtype, pb.KVDtype] = {
    KVDtype.FLOAT32: pb.KV_DTYPE_FLOAT32,
    KVDtype.BFLOAT16: pb.KV_DTYPE_BFLOAT16,
    KVDtype.FLOAT16: pb.KV_DTYPE_FLOAT16,
    KVDtype.FLOAT8_E4M3: pb.KV_DTYPE_FLOAT8_E4M3,
}


@dataclass(frozen=True)
class KVLayout:
    """Payload of one request: `num_layers x num_tokens x kv_elems` elements, layer-major."""

    num_layers: int
    num_tokens: int
    kv_elems: int
    dtype: KVDtype

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_tokens", "kv_elems"):
            if getattr(self, name) < 0:
                raise TransferSizeMismatch(f"KVLayout.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def token_bytes(self) -> int:
        """Bytes of one token in one layer."""
        return self.kv_elems * self.dtype.element_bytes

    @property
    def layer_bytes(self) -> int:
        return self.num_tokens * self.token_bytes

    @property
    def total_bytes(self) -> int:
        return self.num_layers * self.layer_bytes

    def check_compatible(self, other: KVLayout) -> None:
        """Raise TransferSizeMismatch naming the first field that differs."""
        for name in ("num_layers", "num_tokens", "kv_elems", "dtype"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                raise TransferSizeMismatch(f"KV layout mismatch: {name} is {theirs}, expected {mine}")

    def to_proto(self) -> pb.KVLayout:
        return pb.KVLayout(
            num_layers=self.num_layers,
            num_tokens=self.num_tokens,
            kv_elems=self.kv_elems,
            dtype=self.dtype.to_proto(),
            total_bytes=self.total_bytes,
        )

    @classmethod
    def from_proto(cls, msg: pb.KVLayout) -> KVLayout:
        layout = cls(msg.num_layers, msg.num_tokens, msg.kv_elems, KVDtype.from_proto(msg.dtype))
        if msg.total_bytes != layout.total_bytes:
            raise TransferSizeMismatch(
                f"KV layout says {msg.total_bytes} bytes but its shape makes {layout.total_bytes}"
            )
        return layout


@dataclass(frozen=True)
class TransferHandle:
    """What a prefill rank returns for a request's KV: where and how to pull it, and until when."""

    transfer_id: str
    address: str
    backend: KVBackend
    layout: KVLayout
    lease_expires_at_s: float  # Unix time
    descriptor: bytes = b""  # backend-specific

    def to_proto(self) -> pb.KVHandle:
        return pb.KVHandle(
            transfer_id=self.transfer_id,
            address=self.address,
            backend=self.backend.value,
            layout=self.layout.to_proto(),
            lease_expires_at_s=self.lease_expires_at_s,
            backend_descriptor=self.descriptor,
        )

    @classmethod
    def from_proto(cls, msg: pb.KVHandle) -> TransferHandle:
        try:
            backend = KVBackend(msg.backend)
        except ValueError:
            raise TransferSizeMismatch(f"unknown KV backend {msg.backend!r} in handle") from None
        return cls(
            msg.transfer_id,
            msg.address,
            backend,
            KVLayout.from_proto(msg.layout),
            msg.lease_expires_at_s,
            msg.backend_descriptor,
        )
