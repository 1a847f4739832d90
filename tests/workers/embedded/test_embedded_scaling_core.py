"""The embedded stack's pure resize rules: bounds, which groups a shrink stops, when a group is
idle enough to stop."""

from __future__ import annotations

import pytest
from moeplane.api.enums import Role
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest, plan_from_deployment
from moeplane.workers.embedded.scaling import (
    EMBEDDED_MAX_GROUPS,
    GroupLoad,
    ScaleError,
    check_groups,
    group_idle,
    next_indices,
    surplus,
)

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


def test_shrink_stops_the_newest_and_growth_reuses_free_indices() -> None:
    ids = ["decode-0", "decode-10", "decode-2", "decode-1"]
    assert surplus(ids, 2) == ["decode-2", "decode-10"]
    assert surplus(ids, 4) == []
    assert next_indices(["prefill-0", "prefill-2"], 2) == [1, 3]


@pytest.mark.parametrize(
    ("load", "idle"),
    [
        (GroupLoad(0, 0, 0, 0), True),
        (GroupLoad(1, 0, 0, 0), False),  # still running a request
        (GroupLoad(0, 3, 0, 0), False),  # blocks in use
        (GroupLoad(0, 0, 3, 0), False),  # KV under a lease: a decode group may still pull it
        (GroupLoad(0, 0, 0, 1), False),  # routed by the frontend, not arrived yet
    ],
)
def test_a_group_is_idle_only_when_nothing_holds_it(load: GroupLoad, idle: bool) -> None:
    assert group_idle(load) is idle
