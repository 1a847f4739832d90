"""Shared fixtures of the planner tests: DeepSeek-R1 on H800 as examples/deepseek-r1.yaml lays it
out, and the planner service against the emulated API server (tests/kube; the planner's calls are
recorded as user `planner` and checked against tests/planner/api_calls.json) and a real Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.kube.plugin import kube_cluster, kube_crds

__all__ = ["kube_cluster", "kube_crds"]

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


@pytest.fixture
async def service(kube_crds, redis_server):
    """The planner service (ticks driven by the test) behind a real HTTP server on 127.0.0.1."""
    from tests.planner.service_harness import started

    async with started(kube_crds, redis_server) as pair:
        yield pair
