"""The committed generated code of protos/ matches what `make protos` writes today."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from moeplane.protos import generate

pytestmark = pytest.mark.unit

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def committed_files() -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in generate.PROTO_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)
    }


def test_every_proto_has_committed_modules() -> None:
    names = set(committed_files())
    for proto in generate.proto_files():
        stem = proto.stem
        assert {f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"} <= names, stem


def test_generated_header_records_the_pinned_grpcio_tools() -> None:
    for name, text in committed_files().items():
        if name.endswith("_pb2_grpc.py"):
            found = re.search(rb"GRPC_GENERATED_VERSION = '([^']+)'", text)
            assert found, name
            assert found.group(1).decode() == generate.GRPCIO_TOOLS_VERSION, name


def test_committed_generated_code_is_fresh(tmp_path: Path) -> None:
    installed = metadata.version("grpcio-tools")
    if installed != generate.GRPCIO_TOOLS_VERSION:
        pytest.fail(
            f"grpcio-tools {installed} is installed, the generated code is pinned to "
            f"{generate.GRPCIO_TOOLS_VERSION}: install the pinned release to check freshness"
        )
    fresh = {p.name: p.read_bytes() for p in generate.generate(tmp_path)}
    committed = committed_files()
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code, run `make protos`: {stale}"


def test_stale_code_is_detected(tmp_path: Path) -> None:
    """Editing a .proto without regenerating changes the output, so the check above can fail."""
    src = tmp_path / "protos"
    src.mkdir()
    for proto in generate.proto_files():
        (src / proto.name).write_bytes(proto.read_bytes())
    kv = src / "kv_transfer.proto"
    field = "uint32 chunk_bytes = 2;"
    edited_text = kv.read_text().replace(field, field + "\n  bool x = 9;", 1)
    kv.write_text(edited_text)
    edited = {p.name: p.read_bytes() for p in generate.generate(tmp_path / "out", proto_dir=src)}
    assert edited["kv_transfer_pb2.py"] != committed_files()["kv_transfer_pb2.py"]


def test_generated_modules_import_as_package() -> None:
    from moeplane.protos import kv_transfer_pb2, worker_control_pb2, worker_control_pb2_grpc

    handle = kv_transfer_pb2.KVHandle(transfer_id="t", address="127.0.0.1:1")
    req = worker_control_pb2.DecodeRequest(request_id="r", kv=handle)
    assert worker_control_pb2.DecodeRequest.FromString(req.SerializeToString()).kv.transfer_id == "t"
    assert hasattr(worker_control_pb2_grpc, "WorkerControlStub")
