"""Operator fixtures: the emulated cluster (tests.kube), and the operator running against it.

Every API call the operator makes in these tests is checked against `moeplane.operator.rbac.RULES`
(harness.check_rbac) and, by the `kube_cluster` fixture, against the committed recording
`tests/operator/api_calls.json` that the Helm chart's RBAC is checked against
(tests/kube/recording.py; re-record with MOEPLANE_RECORD_API_CALLS=1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from moeplane.operator.config import OperatorConfig

from tests.kube.cluster import EmulatedCluster
from tests.kube.plugin import kube_cluster, kube_crds, kuberay
from tests.operator.harness import FAST, check_rbac, operator_in_thread

__all__ = ["kube_cluster", "kube_crds", "kuberay"]


@pytest.fixture(scope="session")
def operator_api_calls() -> set[tuple[str, str, str]]:
    """The operator's calls across the session, as harness.check_rbac collects them."""
    return set()


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
