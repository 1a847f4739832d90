"""Frames, checksums and leases on their own (no network)."""

from __future__ import annotations

import os

import pytest
from moeplane.workers.kv.buffers import BufferSink, BufferSource
from moeplane.workers.kv.checksum import ChecksumKind, TransferDigest, checksum, payload_digest
from moeplane.workers.kv.errors import ChecksumMismatch, KVTransferError, TransferNotFound
from moeplane.workers.kv.frames import (
    FLAG_LAST,
    FrameChecker,
    FrameEncoder,
    FrameHeader,
    check_chunk_bytes,
    chunk_ranges,
    decode_frame,
    encode_frame,
)
from moeplane.workers.kv.layout import KVBackend, KVDtype, KVLayout, TransferHandle
from moeplane.workers.kv.leases import LeaseTable

pytestmark = pytest.mark.unit


def test_frame_round_trip() -> None:
    payload = os.urandom(1000)
    header = FrameHeader(3, FLAG_LAST, 4096, 1000, checksum(payload), 77, 5096)
    got, body = decode_frame(encode_frame(header, memoryview(payload)))
    assert got == header and bytes(body) == payload and got.is_last


def test_malformed_frames_are_data_loss() -> None:
    frame = encode_frame(FrameHeader(0, 0, 0, 10, 0, 0, 10), b"x" * 10)
    with pytest.raises(ChecksumMismatch, match="declares 10 payload bytes but carries 9"):
        decode_frame(frame[:-1])
    with pytest.raises(ChecksumMismatch, match="bad magic"):
        decode_frame(b"NOPE" + frame[4:])
    with pytest.raises(ChecksumMismatch, match="shorter than"):
        decode_frame(b"MKV1")


@pytest.mark.parametrize("kind", list(ChecksumKind))
def test_checksums_detect_a_flipped_bit(kind: ChecksumKind) -> None:
    data = bytearray(os.urandom(4096))
    before = checksum(data, kind)
    data[1234] ^= 0x10
    assert checksum(data, kind) != before


def test_digest_catches_reordered_chunks() -> None:
    data = os.urandom(3 * 1024)
    a, b = TransferDigest(), TransferDigest()
    chunks = [(i, data[i : i + 1024]) for i in range(0, 3072, 1024)]
    for off, c in chunks:
        a.update(off, len(c), checksum(c))
    for off, c in [chunks[1], chunks[0], chunks[2]]:
        b.update(off, len(c), checksum(c))
    assert a.value != b.value and a.value == payload_digest(data, 1024)
    assert a.num_bytes == 3072 and a.num_chunks == 3


def frames_of(data: bytes, chunk: int, first: int, count: int) -> list[bytes]:
    digest, out = TransferDigest(), []
    for index in range(first, first + count):
        piece = data[index * chunk : (index + 1) * chunk]
        crc = checksum(piece, ChecksumKind.CRC32)  # frames without FLAG_CRC32C carry zlib CRC-32
        running = digest.update(index * chunk, len(piece), crc)
        flags = FLAG_LAST if index == first + count - 1 else 0
        header = FrameHeader(index, flags, index * chunk, len(piece), crc, running, len(data))
        out.append(encode_frame(header, piece))
    return out


def test_frame_checker_accepts_a_range_and_rejects_gaps_and_duplicates() -> None:
    data = os.urandom(10 * 100 + 7)
    assert chunk_ranges(len(data), 100, 3) == [(0, 4), (4, 4), (8, 3)]
    frames = frames_of(data, 100, 4, 4)
    ok = FrameChecker(4, 4, 100, len(data))
    for f in frames:
        ok.check(*decode_frame(f))
    ok.finish()
    gap = FrameChecker(4, 4, 100, len(data))
    gap.check(*decode_frame(frames[0]))
    with pytest.raises(ChecksumMismatch, match=r"chunk 6 at offset 600 .* out of order: expected chunk 5"):
        gap.check(*decode_frame(frames[2]))
    short = FrameChecker(4, 4, 100, len(data))
    for f in frames[:3]:
        short.check(*decode_frame(f))
    with pytest.raises(ChecksumMismatch, match="ended after 3 of 4 chunks"):
        short.finish()
    flipped = bytearray(frames[1])
    flipped[-1] ^= 1
    bad = FrameChecker(4, 4, 100, len(data))
    bad.check(*decode_frame(frames[0]))
    with pytest.raises(ChecksumMismatch, match=r"chunk 5 at offset 500 .* is corrupt"):
        bad.check(*decode_frame(bytes(flipped)))


def test_frame_encoder_feeds_the_checker_and_builds_frames_in_order_only() -> None:
    data = os.urandom(10 * 100 + 7)
    sink = BufferSink(bytearray(len(data)))
    for first, count in chunk_ranges(len(data), 100, 3):
        encoder = FrameEncoder(BufferSource(data), first, count, 100)
        checker = FrameChecker(first, count, 100, len(data))
        for index in range(first, encoder.last_chunk + 1):
            header, payload = decode_frame(encoder.frame(index))
            checker.check(header, payload)
            sink.write(header.offset, payload)
        checker.finish()
        assert header.is_last and header.digest == encoder.digest.value
    assert bytes(sink.view) == data
    encoder = FrameEncoder(BufferSource(data), 4, 4, 100)
    with pytest.raises(ValueError, match="frame 5 asked for; the next is 4, the last 7"):
        encoder.frame(5)
    for index in range(4, 8):
        encoder.frame(index)
    with pytest.raises(ValueError, match="frame 8 asked for; the next is 8, the last 7"):
        encoder.frame(8)


def test_buffer_sink_writes_any_bytes_like_within_its_range() -> None:
    sink = BufferSink(bytearray(8))
    sink.write(0, b"ab")
    sink.write(2, memoryview(b"xxcdxx")[2:4])
    sink.write(4, bytearray(b"efgh"))
    assert bytes(sink.view) == b"abcdefgh"
    with pytest.raises(KVTransferError, match=r"range \[6, 9\) is outside the 8-byte payload"):
        sink.write(6, b"xyz")
    with pytest.raises(ValueError, match="writable"):
        BufferSink(memoryview(b"read-only"))


def test_chunk_size_limits() -> None:
    assert check_chunk_bytes(256 * 1024) == 256 * 1024
    with pytest.raises(KVTransferError, match=r"outside \[262144, 1048576\]"):
        check_chunk_bytes(4096)


def test_handle_round_trips_through_protobuf() -> None:
    layout = KVLayout(61, 4096, 576, KVDtype.BFLOAT16)
    assert layout.total_bytes == 70_272 * 4096  # DeepSeek-V3's KV per token, times 4,096 tokens
    handle = TransferHandle("t", "127.0.0.1:1", KVBackend.GRPC, layout, 123.5, b"x")
    assert TransferHandle.from_proto(handle.to_proto()) == handle
    with pytest.raises(KVTransferError, match="kv_elems is 8, expected 576"):
        layout.check_compatible(KVLayout(61, 4096, 8, KVDtype.BFLOAT16))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lease_expires_but_never_while_pulled() -> None:
    clock = FakeClock()
    table: LeaseTable[str] = LeaseTable(clock)
    table.grant("a", "blocks-a", lease_s=5.0)
    table.grant("b", "blocks-b", lease_s=5.0)
    with pytest.raises(KVTransferError, match="already holds a lease"):
        table.grant("a", "x", 1.0)
    assert table.begin_pull("a") == "blocks-a"
    clock.now += 6
    assert table.expire() == [("b", "blocks-b")]  # a is being pulled
    table.end_pull("a")  # renews: a full lease period to ack
    clock.now += 4.9
    assert table.expire() == []
    assert table.release("a") == "blocks-a" and table.release("a") is None
    with pytest.raises(TransferNotFound):
        table.begin_pull("b")
    assert len(table) == 0
