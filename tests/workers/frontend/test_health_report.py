"""/health's verdict, pure: 503 only when a role that must serve has no live group, `degraded` (200)
when every role serves but a group is restarting or failed, the reason naming the groups."""

from __future__ import annotations

import pytest
from moeplane.api.enums import Role
from moeplane.workers.frontend.health import HealthStatus, health_report

from moeplane.bus.registry import GroupState, WorkerGroup

pytestmark = pytest.mark.unit


def g(
    gid: str, role: Role, state: GroupState = GroupState.LIVE, message: str = "", restarts: int = 0
) -> WorkerGroup:
    return WorkerGroup(
        group_id=gid, role=role, address="127.0.0.1:1", model="tiny", ep_size=2, block_size_tokens=16,
        kv_blocks_total=64, kv_blocks_free=64, max_blocks_per_rank=32, queue_depth=0, heartbeat_at_s=1.0,
        state=state, message=message, restarts=restarts,
    )


def routable(groups: list[WorkerGroup]) -> dict[Role, int]:
    return {r: sum(1 for x in groups if x.role is r and x.routable) for r in Role}


def report(groups: list[WorkerGroup]):
    return health_report(groups, routable(groups))


def test_every_role_live_is_ok() -> None:
    r = report([g("prefill-0", Role.PREFILL), g("decode-0", Role.DECODE)])
    assert (r.status, r.can_serve, r.reason) == (HealthStatus.OK, True, "")
    assert r.roles["decode"]["live"] == 1 and r.roles["decode"]["groups"][0]["state"] == "live"


def test_a_role_without_a_live_group_is_unavailable_with_the_reason() -> None:
    groups = [g("prefill-0", Role.PREFILL), g("decode-0", Role.DECODE, GroupState.RESTARTING, "rank 1 died")]
    r = report(groups)
    assert r.status is HealthStatus.UNAVAILABLE and not r.can_serve
    assert r.reason == "decode: no live group (decode-0 restarting: rank 1 died)"
    assert r.roles["decode"]["restarting"] == 1 and r.roles["decode"]["routable"] == 0
    failed = report([g("prefill-0", Role.PREFILL, GroupState.FAILED, "rank 0 died (3 failures in a row)"),
                     g("decode-0", Role.DECODE)])
    assert failed.status is HealthStatus.UNAVAILABLE and "prefill-0 failed: rank 0 died" in failed.reason


def test_a_pool_that_still_serves_is_degraded_not_down() -> None:
    groups = [g("decode-0", Role.DECODE), g("decode-1", Role.DECODE, GroupState.RESTARTING, "rank 0 hung")]
    r = report(groups)
    assert r.status is HealthStatus.DEGRADED and r.can_serve
    assert r.reason == "decode: decode-1 restarting: rank 0 hung"


def test_starting_and_draining_groups_are_not_faults() -> None:
    groups = [g("decode-0", Role.DECODE), g("decode-1", Role.DECODE, GroupState.DRAINING),
              g("decode-2", Role.DECODE, GroupState.STARTING)]
    assert report(groups).status is HealthStatus.OK


def test_no_prefill_group_is_aggregated_serving_but_no_decode_group_is_down() -> None:
    assert report([g("decode-0", Role.DECODE)]).status is HealthStatus.OK
    r = report([])
    assert r.status is HealthStatus.UNAVAILABLE and r.reason == "decode: no live group (none registered)"
