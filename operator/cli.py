"""Subcommands of the `moeplane` CLI owned by moeplane.operator."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this component's subcommands (none yet)."""
