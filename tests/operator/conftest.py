"""Operator fixtures: the emulated cluster (tests.kube), and the operator running against it.

Every API call the operator makes in these tests is collected (verb, group, resource) and checked
against `moeplane.operator.rbac.RULES`; the union is written to `.build/operator-api-calls.json`
for the Helm chart's RBAC check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from moeplane.operator.config import OperatorConfig

from tests.kube.cluster import EmulatedCluster
from tests.kube.plugin import kube_cluster, kube_crds, kuberay
from tests.operator.harness import FAST, check_rbac, operator_in_thread

__all__ = ["kube_cluster", "kube_crds", "kuberay"]

ROOT = Path(__file__).resolve().parents[2]
API_CALLS_FILE = ROOT / ".build" / "operator-api-calls.json"


@pytest.fixture(scope="session")
def operator_api_calls() -> Iterator[set[tuple[str, str, str]]]:
    calls: set[tuple[str, str, str]] = set()
    yield calls
    if calls:
        API_CALLS_FILE.parent.mkdir(parents=True, exist_ok=True)
        API_CALLS_FILE.write_text(
            json.dumps([{"verb": v, "group": g, "resource": r} for v, g, r in sorted(calls)], indent=1) + "\n"
        )


@pytest.fixture
def start_operator(
    kube_crds: EmulatedCluster,
    kuberay: Any,
    monkeypatch: pytest.MonkeyPatch,
    operator_api_calls: set[tuple[str, str, str]],
) -> Iterator[Callable[..., Any]]:
    """`with start_operator(**config) as op:` runs an operator (fast resync) for part of a test."""

    def start(**overrides: Any) -> Any:
        return operator_in_thread(kube_crds, OperatorConfig(**{**FAST, **overrides}), monkeypatch)

    yield start
    check_rbac(kube_crds, operator_api_calls)
