"""Domain errors of KV transfer. Each maps to one gRPC status code at the edge (`grpc_status`)."""

from __future__ import annotations

from enum import Enum


class KVErrorKind(Enum):
    """Why a transfer failed; the gRPC adapters translate it to and from a status code."""

    NOT_FOUND = "not_found"  # unknown or already released transfer id
    INVALID_ARGUMENT = "invalid_argument"  # sizes/layout do not match, bad chunk size
    DATA_LOSS = "data_loss"  # checksum mismatch, missing or out-of-order chunk
    UNAUTHENTICATED = "unauthenticated"
    UNAVAILABLE = "unavailable"  # the peer cannot be reached
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


class KVTransferError(Exception):
    """A KV transfer failed; `kind` says why. The receiver's cache is left as it was."""

    kind: KVErrorKind = KVErrorKind.INTERNAL

    def __init__(self, message: str, kind: KVErrorKind | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class TransferNotFound(KVTransferError):
    kind = KVErrorKind.NOT_FOUND


class TransferSizeMismatch(KVTransferError):
    kind = KVErrorKind.INVALID_ARGUMENT


class ChecksumMismatch(KVTransferError):
    kind = KVErrorKind.DATA_LOSS
