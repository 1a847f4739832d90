"""Names and labels: deterministic, and within Kubernetes' length and character limits."""

from __future__ import annotations

import re

import pytest
from moeplane.api.enums import Role
from moeplane.operator import names

pytestmark = pytest.mark.unit

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

DEPLOYMENTS = ["deepseek-r1", "a", "9lives", "x" * 63, "team.models.deepseek-v3-" + "long" * 40]


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_names_fit_their_limits(deployment: str) -> None:
    for role in Role:
        pool = names.pool_name(deployment, role)
        assert len(pool) <= 253
        for service in (names.worker_service(pool), names.frontend(deployment)):
            assert len(service) <= 63 and DNS1035.match(service), service
        rc = names.raycluster(pool, "0123abcd")
        assert len(rc) <= names.MAX_RAYCLUSTER and DNS1035.match(rc) and rc.endswith("-0123abcd")
        # KubeRay's derived head Service must still be a DNS label.
        assert len(rc + "-head-svc") <= 63
        for value in names.pool_labels(deployment, pool, role).values():
            assert len(value) <= 63 and LABEL_VALUE.match(value), value


def test_names_are_deterministic_and_distinct() -> None:
    long_a, long_b = "m" * 70 + "a", "m" * 70 + "b"
    assert names.pool_name(long_a, Role.DECODE) == names.pool_name(long_a, Role.DECODE)
    assert names.frontend(long_a) != names.frontend(long_b)
    assert names.label_value(long_a) != names.label_value(long_b)
    assert names.pool_name("deepseek-r1", Role.DECODE) == "deepseek-r1-decode"
    assert names.worker_service("deepseek-r1-decode") == "deepseek-r1-decode-workers"


def test_storage_prefix_and_finalizer_are_under_moeplane_io() -> None:
    assert names.FINALIZER.startswith("moeplane.io/")
    assert names.PROGRESS_PREFIX == "moeplane.io"
