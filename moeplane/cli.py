"""The `moeplane` console script.

Each component owns its subcommands in a `cli` module exposing `register(subparsers)`; this file
only collects them, so components never edit each other's command code. A registered handler is
`func(args) -> int` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute subcommands. A module listed here must exist and define `register`.
COMMAND_MODULES: tuple[str, ...] = (
    "moeplane.api.cli",
    "moeplane.codegen.cli",
    "moeplane.workers.cli",
    "moeplane.operator.cli",
    "moeplane.planner.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moeplane",
        description="Serve mixture-of-experts models with disaggregated prefill/decode pools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
