"""Shared fixtures of the planner tests: DeepSeek-R1 on H800 as examples/deepseek-r1.yaml lays it out."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "deepseek-r1.yaml"


@pytest.fixture(scope="session")
def r1_spec():
    from moeplane.api.spec import parse_deployment

    return parse_deployment(yaml.safe_load(EXAMPLE.read_text())).spec


@pytest.fixture(scope="session")
def r1_models(r1_spec):
    """(prefill, decode) roofline curves tabulated as a profile, in a PoolModels."""
    from moeplane.planner.spec_adapter import pool_models

    return pool_models(r1_spec)
