"""Generate the Python modules of protos/*.proto (`make protos`, i.e. `python -m moeplane.protos.generate`).

The output is reproducible: the same grpcio-tools release always writes the same bytes, so a test
can regenerate into a temporary folder and compare with the committed files. That release is
pinned (`GRPCIO_TOOLS_VERSION`) because the generated code records it and checks it against the
grpcio runtime at import.

The .proto files import each other as `moeplane/protos/NAME.proto`, so they are compiled from a
temporary tree of that shape; the generated modules then import `moeplane.protos.NAME_pb2`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

GRPCIO_TOOLS_VERSION = "1.85.1"
PROTO_DIR = Path(__file__).resolve().parent
PACKAGE_PATH = Path("moeplane") / "protos"


class ProtoGenerationError(RuntimeError):
    """protoc failed, or the installed grpcio-tools is not the pinned release."""


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    return sorted(proto_dir.glob("*.proto"))


def check_tools_version() -> None:
    try:
        installed = metadata.version("grpcio-tools")
    except metadata.PackageNotFoundError:
        raise ProtoGenerationError(
            f"grpcio-tools is not installed; install grpcio-tools=={GRPCIO_TOOLS_VERSION}"
        ) from None
    if installed != GRPCIO_TOOLS_VERSION:
        raise ProtoGenerationError(
            f"grpcio-tools {installed} is installed but the generated code is pinned to "
            f"{GRPCIO_TOOLS_VERSION}; install grpcio-tools=={GRPCIO_TOOLS_VERSION}"
        )


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Compile every .proto of `proto_dir` into `out_dir`; return the generated files, sorted."""
    from grpc_tools import protoc

    check_tools_version()
    protos = proto_files(proto_dir)
    if not protos:
        raise ProtoGenerationError(f"no .proto files in {proto_dir}")
    with tempfile.TemporaryDirectory(prefix="moeplane-protos-") as tmp:
        src = Path(tmp) / "src"
        dst = Path(tmp) / "out"
        (src / PACKAGE_PATH).mkdir(parents=True)
        dst.mkdir()
        for proto in protos:
            shutil.copyfile(proto, src / PACKAGE_PATH / proto.name)
        include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
        args = [
            "grpc_tools.protoc",
            f"-I{src}",
            f"-I{include}",
            f"--python_out={dst}",
            f"--pyi_out={dst}",
            f"--grpc_python_out={dst}",
            *(str(PACKAGE_PATH / p.name) for p in protos),
        ]
        status = protoc.main(args)
        if status != 0:
            raise ProtoGenerationError(f"protoc exited with status {status} for {[p.name for p in protos]}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in sorted((dst / PACKAGE_PATH).iterdir()):
            target = out_dir / path.name
            shutil.copyfile(path, target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_DIR, help="where to write (default: protos/)")
    args = parser.parse_args(argv)
    try:
        for path in generate(args.out):
            print(path)
    except ProtoGenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
