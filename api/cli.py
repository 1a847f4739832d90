"""`moeplane validate`, `moeplane plan` and `moeplane crds`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Subcommands are added by the Foundation work."""
