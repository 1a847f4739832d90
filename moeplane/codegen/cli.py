"""`moeplane crds`: write the CRDs generated from the API models into crds/ (or check them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from moeplane.codegen.crds import rendered_files

# An editable install: the checkout's crds/ beside moeplane/; `--out-dir` overrides it.
DEFAULT_CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("crds", help="generate crds/*.yaml from the API models")
    p.add_argument("--check", action="store_true", help="exit 1 if the files on disk are stale")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_CRD_DIR, help="default: %(default)s")
    p.set_defaults(func=cmd_crds)


# ---- crds -------------------------------------------------------------------------------------


def cmd_crds(args: argparse.Namespace) -> int:
    out_dir: Path = args.out_dir
    stale = []
    for name, text in rendered_files().items():
        path = out_dir / name
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            out_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if args.check and stale:
        for path in stale:
            print(f"{path} is stale; run `make crds`")
        return 1
    if not stale:
        print(f"{out_dir}: up to date")
    return 0
