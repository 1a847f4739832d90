"""Fuzzed gRPC KV requests (unknown ids, wrong sizes, bad chunk ranges, garbage bytes) against a
real KV transfer server over loopback: every call either succeeds or gets a specific gRPC status
(NOT_FOUND, INVALID_ARGUMENT, never UNKNOWN or INTERNAL), and afterwards the held transfer is
untouched: same lease, and a valid pull still delivers it exactly and acks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moeplane.protos import kv_transfer_pb2 as pb
from moeplane.workers.kv.buffers import BufferSink, BufferSource
from moeplane.workers.kv.grpc_backend import GrpcKVTransport
from moeplane.workers.kv.layout import KVDtype, KVLayout, TransferHandle
from moeplane.workers.kv.transport import ReleaseReason
from moeplane.workers.serving.loop import LoopThread

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

CHUNK = 256 * 1024
SIZE = 3 * CHUNK + 4 * 123
HELD = "held-transfer"
SERVICE = "/moeplane.kv.v1.KVTransfer"
PROPER = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

U32 = st.integers(min_value=0, max_value=2**32 - 1)
SMALL = st.integers(min_value=0, max_value=8)
TIDS = st.sampled_from([HELD, "", "nope", HELD + "x"]) | st.text(max_size=40)


class Held:
    def __init__(self) -> None:
        self.loop = LoopThread("fuzz-kv")
        self.server = GrpcKVTransport(chunk_bytes=CHUNK)
        self.client = GrpcKVTransport(chunk_bytes=CHUNK)
        self.loop.run(self.server.start())
        self.data = bytearray(os.urandom(SIZE))
        self.released: list = []
        layout = KVLayout(num_layers=1, num_tokens=SIZE // 4, kv_elems=1, dtype=KVDtype.FLOAT32)
        self.handle: TransferHandle = self.server.offer(
            HELD, layout, BufferSource(self.data), 600.0, lambda t, r: self.released.append((t, r))
        )
        self.channel = grpc.insecure_channel(self.handle.address)

    def close(self) -> None:
        self.channel.close()
        self.loop.run(self.client.close())
        self.loop.run(self.server.close())
        self.loop.close()


@pytest.fixture(scope="module")
def held() -> Iterator[Held]:
    h = Held()
    yield h
    # No fuzzed call disturbed the held transfer: a valid pull is exact and acks it.
    assert h.server.num_leases == 1 and h.released == []
    sink = BufferSink(bytearray(SIZE))
    h.loop.run(h.client.pull(h.handle, sink))
    assert bytes(sink.view) == bytes(h.data)
    assert h.released == [(HELD, ReleaseReason.ACKED)] and h.server.num_leases == 0
    h.close()


def expect_proper(call) -> object:
    try:
        return call()
    except grpc.RpcError as exc:
        assert exc.code() in PROPER, (exc.code(), exc.details())
        assert exc.details(), exc.code()
        return None


def assert_untouched(h: Held) -> None:
    assert h.server.num_leases == 1 and h.released == []


@FUZZ
@given(
    tid=TIDS,
    chunk_bytes=st.sampled_from([0, CHUNK, 1, 100, 2**20, 2**31]) | U32,
    expected=st.sampled_from([SIZE, SIZE - 4, SIZE + 4, 0]) | st.integers(0, 2**64 - 1),
    first=SMALL | U32,
    count=SMALL | U32,
)
def test_fuzzed_pull_requests(
    held: Held, tid: str, chunk_bytes: int, expected: int, first: int, count: int
) -> None:
    pull = held.channel.unary_stream(f"{SERVICE}/Pull", request_serializer=None, response_deserializer=None)
    req = pb.PullRequest(
        transfer_id=tid, chunk_bytes=chunk_bytes, expected_bytes=expected, first_chunk=first, num_chunks=count
    ).SerializeToString()
    frames = expect_proper(lambda: list(pull(req, timeout=20)))
    if frames is not None:  # only a well-formed request for the held transfer may succeed
        assert tid == HELD and expected == SIZE and frames
    assert_untouched(held)


@FUZZ
@given(raw=st.binary(max_size=64))
def test_garbage_pull_bytes(held: Held, raw: bytes) -> None:
    pull = held.channel.unary_stream(f"{SERVICE}/Pull", request_serializer=None, response_deserializer=None)
    expect_proper(lambda: list(pull(raw, timeout=20)))
    assert_untouched(held)


@FUZZ
@given(
    method=st.sampled_from(["Describe", "Checksum", "Ack"]),
    tid=TIDS,
    success=st.booleans(),
    error=st.text(max_size=30),
)
def test_fuzzed_unary_requests(held: Held, method: str, tid: str, success: bool, error: str) -> None:
    if method == "Ack" and tid == HELD:
        tid += "-other"  # acking the held transfer is a legitimate release, not bad input
    request = {
        "Describe": pb.DescribeRequest(transfer_id=tid),
        "Checksum": pb.ChecksumRequest(transfer_id=tid),
        "Ack": pb.AckRequest(transfer_id=tid, success=success, error=error),
    }[method]
    stub = held.channel.unary_unary(
        f"{SERVICE}/{method}", request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
    )
    reply = expect_proper(lambda: stub(request, timeout=20))
    if method == "Ack":
        assert pb.AckResponse.FromString(reply).released is False  # type: ignore[arg-type]
    elif reply is not None:
        assert tid == HELD
    assert_untouched(held)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["Describe", "Checksum", "Ack"]), raw=st.binary(max_size=32))
def test_garbage_unary_bytes(held: Held, method: str, raw: bytes) -> None:
    stub = held.channel.unary_unary(
        f"{SERVICE}/{method}", request_serializer=None, response_deserializer=None
    )
    try:
        stub(raw, timeout=20)
    except grpc.RpcError as exc:
        assert exc.code() in PROPER, (exc.code(), exc.details())
        if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
            assert "does not parse" in (exc.details() or ""), exc.details()
    assert_untouched(held)
