"""The raw frames of the gRPC `Pull` stream: a fixed little-endian header, then the payload bytes.

Header (40 bytes): magic b"MKV1", frame index u32, flags u32, payload offset u64, payload length
u32, CRC of this payload u32 (CRC-32C if `FLAG_CRC32C`), whole-transfer digest so far u32, total
payload bytes u64. The last frame has `FLAG_LAST`; its digest is the whole-transfer checksum.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from moeplane.workers.kv.buffers import KVSource
from moeplane.workers.kv.checksum import (
    DEFAULT_CHECKSUM,
    BytesLike,
    ChecksumKind,
    TransferDigest,
    checksum,
)
from moeplane.workers.kv.errors import ChecksumMismatch, KVErrorKind, KVTransferError, TransferSizeMismatch

MAGIC = b"MKV1"
FLAG_LAST = 1
FLAG_CRC32C = 2  # chunk CRCs use CRC-32C; without it, zlib's CRC-32
_HEADER = struct.Struct("<4sIIQIIIQ")
HEADER_BYTES = _HEADER.size

MIN_CHUNK_BYTES = 256 * 1024
MAX_CHUNK_BYTES = 1024 * 1024
DEFAULT_CHUNK_BYTES = 1024 * 1024
# gRPC messages carry a header on top of a chunk; limits are raised on both sides to fit both.
GRPC_MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + 64 * 1024


@dataclass(frozen=True)
class FrameHeader:
    index: int
    flags: int
    offset: int
    length: int
    crc32: int
    digest: int
    total_bytes: int

    @property
    def is_last(self) -> bool:
        return bool(self.flags & FLAG_LAST)

    @property
    def checksum_kind(self) -> ChecksumKind:
        return ChecksumKind.CRC32C if self.flags & FLAG_CRC32C else ChecksumKind.CRC32


def check_chunk_bytes(chunk_bytes: int) -> int:
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise KVTransferError(
            f"chunk_bytes {chunk_bytes} is outside [{MIN_CHUNK_BYTES}, {MAX_CHUNK_BYTES}] (256 KiB–1 MiB)",
            KVErrorKind.INVALID_ARGUMENT,
        )
    return chunk_bytes


def encode_frame(header: FrameHeader, payload: BytesLike) -> bytes:
    """Header and payload in one bytes object (one copy of the payload)."""
    head = _HEADER.pack(
        MAGIC,
        header.index,
        header.flags,
        header.offset,
        header.length,
        header.crc32,
        header.digest,
        header.total_bytes,
    )
    return b"".join((head, payload))


def decode_frame(frame: bytes) -> tuple[FrameHeader, memoryview]:
    """Split a frame; raises ChecksumMismatch (DATA_LOSS) if it is malformed."""
    if len(frame) < HEADER_BYTES:
        raise ChecksumMismatch(f"frame of {len(frame)} bytes is shorter than its {HEADER_BYTES}-byte header")
    magic, index, flags, offset, length, crc, digest, total = _HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise ChecksumMismatch(f"frame {index} has bad magic {magic!r}")
    payload = memoryview(frame)[HEADER_BYTES:]
    if len(payload) != length:
        raise ChecksumMismatch(f"frame {index} declares {length} payload bytes but carries {len(payload)}")
    return FrameHeader(index, flags, offset, length, crc, digest, total), payload


def num_chunks_of(total_bytes: int, chunk_bytes: int) -> int:
    """Chunks of a payload; an empty payload still sends one (empty, last) frame."""
    return max(1, -(-total_bytes // chunk_bytes))


def chunk_ranges(total_bytes: int, chunk_bytes: int, streams: int) -> list[tuple[int, int]]:
    """Split the chunks into at most `streams` contiguous (first_chunk, num_chunks) ranges."""
    n = num_chunks_of(total_bytes, chunk_bytes)
    streams = max(1, min(streams, n))
    base, extra = divmod(n, streams)
    ranges, first = [], 0
    for i in range(streams):
        count = base + (1 if i < extra else 0)
        ranges.append((first, count))
        first += count
    return ranges


class FrameEncoder:
    """Builds the frames of one stream (chunks [first, first + count) of `source`), in order.

    `frame(index)` must be called for consecutive indices: the running digest depends on the order.
    """

    def __init__(self, source: KVSource, first_chunk: int, num_chunks: int, chunk_bytes: int) -> None:
        self.source, self.chunk_bytes = source, chunk_bytes
        self.first_chunk, self.num_chunks = first_chunk, num_chunks
        self.total_bytes = source.total_bytes
        self.digest = TransferDigest()
        self._next = first_chunk
        self._kind_flag = FLAG_CRC32C if DEFAULT_CHECKSUM is ChecksumKind.CRC32C else 0

    @property
    def last_chunk(self) -> int:
        return self.first_chunk + self.num_chunks - 1

    def frame(self, index: int) -> bytes:
        if index != self._next or index > self.last_chunk:
            raise ValueError(f"frame {index} asked for; the next is {self._next}, the last {self.last_chunk}")
        self._next += 1
        offset = index * self.chunk_bytes
        length = min(self.chunk_bytes, self.total_bytes - offset)
        payload = self.source.read(offset, length)
        crc = checksum(payload, DEFAULT_CHECKSUM)
        flags = self._kind_flag | (FLAG_LAST if index == self.last_chunk else 0)
        running = self.digest.update(offset, length, crc)
        header = FrameHeader(index, flags, offset, length, crc, running, self.total_bytes)
        return encode_frame(header, payload)


class FrameChecker:
    """Verifies the frames of one stream (chunks [first, first + count) of the payload), in order.

    Each frame must be the next chunk at its offset, with its CRC and the stream's running digest
    matching the sender's, and the last one flagged; anything else is ChecksumMismatch (DATA_LOSS).
    """

    def __init__(self, first_chunk: int, num_chunks: int, chunk_bytes: int, total_bytes: int) -> None:
        self.first_chunk, self.num_chunks = first_chunk, num_chunks
        self.chunk_bytes, self.total_bytes = chunk_bytes, total_bytes
        self.digest = TransferDigest()
        self.crcs: list[int] = []

    @property
    def done(self) -> bool:
        return len(self.crcs) == self.num_chunks

    def check(self, header: FrameHeader, payload: memoryview) -> None:
        if header.total_bytes != self.total_bytes:
            raise TransferSizeMismatch(
                f"the sender has {header.total_bytes} bytes, the receiver {self.total_bytes}"
            )
        index = self.first_chunk + len(self.crcs)
        offset = index * self.chunk_bytes
        length = min(self.chunk_bytes, self.total_bytes - offset)
        if self.done or header.index != index or header.offset != offset or header.length != length:
            raise ChecksumMismatch(
                f"chunk {header.index} at offset {header.offset} ({header.length} bytes) arrived out of "
                f"order: expected chunk {index} at offset {offset} ({length} bytes)"
            )
        try:
            got = checksum(payload, header.checksum_kind)
        except RuntimeError as exc:
            raise KVTransferError(str(exc)) from None
        if got != header.crc32:
            raise ChecksumMismatch(
                f"chunk {header.index} at offset {header.offset} ({header.length} bytes) is corrupt: "
                f"{header.checksum_kind.name} {got:#010x}, sender's {header.crc32:#010x}"
            )
        running = self.digest.update(header.offset, header.length, got)
        if running != header.digest:
            raise ChecksumMismatch(
                f"stream digest {running:#010x} after chunk {header.index} differs from the sender's "
                f"{header.digest:#010x}"
            )
        self.crcs.append(got)
        if header.is_last != self.done:
            raise ChecksumMismatch(
                f"chunk {header.index}: last-frame flag is {header.is_last}, expected {self.done}"
            )

    def finish(self) -> None:
        if not self.done:
            raise ChecksumMismatch(
                f"stream of chunks {self.first_chunk}..{self.first_chunk + self.num_chunks - 1} ended "
                f"after {len(self.crcs)} of {self.num_chunks} chunks"
            )
