"""The embedded stack's resize bounds (which groups a resize starts or drains is the supervisor's
rule: tests/workers/supervisor/test_policy.py)."""

from __future__ import annotations

import pytest
from moeplane.api.enums import Role
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest, plan_from_deployment
from moeplane.workers.embedded.scaling import EMBEDDED_MAX_GROUPS, ScaleError, check_groups

pytestmark = pytest.mark.unit


def test_bounds_come_from_the_manifest_and_the_embedded_cap() -> None:
    plan = plan_from_deployment(load_manifest(DEFAULT_MANIFEST))
    assert (plan.decode.min_groups, plan.decode.max_groups) == (1, 2)
    assert check_groups(Role.DECODE, 2, 1, 2) == 2
    with pytest.raises(ScaleError, match=r"spec.decode: 3 groups is outside the embedded bounds \[1, 2\]"):
        check_groups(Role.DECODE, 3, 1, 2)
    with pytest.raises(ScaleError, match=r"\[1, 2\]"):
        check_groups(Role.DECODE, 0, 0, 2)  # decode never goes to zero
    assert check_groups(Role.PREFILL, 0, 0, 2) == 0  # prefill may: aggregated serving
    with pytest.raises(ScaleError, match=f"embedded cap {EMBEDDED_MAX_GROUPS}"):
        check_groups(Role.PREFILL, EMBEDDED_MAX_GROUPS + 1, 0, 100)
