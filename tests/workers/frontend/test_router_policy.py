"""The routing policy, pure: live groups only; decode by free KV capacity for what a request needs now
(its prompt plus a block of headroom, never its max_tokens), prefill by queue depth; in-flight
accounting; a failed run of a group is skipped until the group registers anew."""

from __future__ import annotations

import math

import pytest
from moeplane.api.enums import Role
from moeplane.workers.frontend.errors import InvalidRequest, NoCapacity
from moeplane.workers.frontend.router import Inflight, choose_route

from moeplane.bus.registry import GroupState, WorkerGroup

pytestmark = pytest.mark.unit

HB = 1000.0  # heartbeat time of every group below


def group(gid: str, role: Role, free: int, queue: int = 0, total: int = 256, ep: int = 2,
          model: str = "tiny", per_rank: int | None = None, state: GroupState = GroupState.LIVE,
          incarnation: int = 1) -> WorkerGroup:
    return WorkerGroup(
        group_id=gid, role=role, address=f"127.0.0.1:{abs(hash(gid)) % 60000 + 1}", model=model,
        ep_size=ep, block_size_tokens=16, kv_blocks_total=total, kv_blocks_free=free,
        max_blocks_per_rank=free // ep if per_rank is None else per_rank, queue_depth=queue,
        heartbeat_at_s=HB, state=state, incarnation=incarnation,
    )


P, D = Role.PREFILL, Role.DECODE


def test_decode_by_free_blocks_prefill_by_queue_depth() -> None:
    groups = [
        group("p0", P, 200, queue=5), group("p1", P, 40, queue=1), group("d0", D, 100), group("d1", D, 240)
    ]
    route = choose_route(groups, "tiny", prompt_tokens=100, max_tokens=60, inflight=Inflight())
    assert route.decode.group_id == "d1" and route.prefill is not None and route.prefill.group_id == "p1"
    assert route.decode_blocks == 8  # ceil((100 prompt + 16 headroom) / 16): not the 60 max_tokens


def test_requests_sent_since_the_heartbeat_count_against_a_group() -> None:
    groups = [group("p0", P, 200), group("p1", P, 200), group("d0", D, 200), group("d1", D, 196)]
    inflight = Inflight()
    picks = []
    for _ in range(4):
        r = choose_route(groups, "tiny", prompt_tokens=64, max_tokens=96, inflight=inflight)
        assert r.prefill is not None
        inflight.add(r.decode.group_id, r.decode_blocks, HB + 1)
        inflight.add(r.prefill.group_id, 4, HB + 1)
        picks.append((r.prefill.group_id, r.decode.group_id))
    # Without the accounting, all four would go to p0/d0.
    assert picks == [("p0", "d0"), ("p1", "d1"), ("p0", "d0"), ("p1", "d1")]


def test_reservations_older_than_the_heartbeat_are_already_counted() -> None:
    groups = [group("d0", D, 100), group("d1", D, 90)]
    inflight = Inflight()
    inflight.add("d0", 50, HB - 1)  # sent before the heartbeat: its blocks are in kv_blocks_free
    assert choose_route(groups, "tiny", 16, 16, inflight).decode.group_id == "d0"
    pending = inflight.add("d0", 50, math.inf)  # decode not started yet: never in a heartbeat
    assert choose_route(groups, "tiny", 16, 16, inflight).decode.group_id == "d1"
    inflight.remove(pending)
    assert choose_route(groups, "tiny", 16, 16, inflight).decode.group_id == "d0"


def test_admission_takes_the_prompt_and_headroom_not_max_tokens() -> None:
    # 40 prompt tokens + 16 of headroom = 4 blocks fit in 4 free; 40 + 400 max_tokens would need 28.
    route = choose_route([group("d0", D, 4, per_rank=4)], "tiny", 40, 400, Inflight())
    assert route.decode_blocks == 4
    # A short answer reserves only what it can use.
    assert choose_route([group("d0", D, 4, per_rank=4)], "tiny", 40, 2, Inflight()).decode_blocks == 3


def test_no_free_capacity_is_no_capacity_with_retry_after() -> None:
    groups = [group("p0", P, 200), group("d0", D, 3, per_rank=3)]
    with pytest.raises(NoCapacity, match="no decode group has 4 free KV blocks") as info:
        choose_route(groups, "tiny", 40, 40, Inflight(), retry_after_s=2)
    assert info.value.http_status == 503 and info.value.headers() == {"Retry-After": "2"}
    # Free blocks spread over ranks do not help: a request lives on one DP rank.
    with pytest.raises(NoCapacity):
        choose_route([group("d0", D, 100, per_rank=3)], "tiny", 40, 40, Inflight())


@pytest.mark.parametrize("state", [s for s in GroupState if s is not GroupState.LIVE])
def test_only_live_groups_are_routed_to(state: GroupState) -> None:
    groups = [group("p0", P, 100, state=state), group("d0", D, 200, state=state), group("d1", D, 10)]
    route = choose_route(groups, "tiny", 10, 10, Inflight())
    assert route.prefill is None and route.decode.group_id == "d1"
    with pytest.raises(NoCapacity, match="no live decode group"):
        choose_route(groups[:2], "tiny", 10, 10, Inflight())


def test_no_decode_group_at_all_is_503() -> None:
    with pytest.raises(NoCapacity, match="no live decode group serves 'tiny'"):
        choose_route([group("p0", P, 100), group("d0", D, 100, model="other")], "tiny", 1, 1, Inflight())


def test_a_request_larger_than_any_rank_is_400_not_503() -> None:
    with pytest.raises(InvalidRequest, match="needs 17 KV blocks on one rank, but a decode rank holds"):
        choose_route([group("d0", D, 32, total=32)], "tiny", 200, 72, Inflight())


def test_without_prefill_groups_decode_computes_the_prompt() -> None:
    route = choose_route([group("d0", D, 100)], "tiny", 10, 10, Inflight())
    assert route.prefill is None and route.decode.group_id == "d0"


def test_excluded_runs_are_routed_around_until_the_group_restarts() -> None:
    groups = [group("p0", P, 100), group("p1", P, 100, queue=9), group("d0", D, 100), group("d1", D, 50)]
    failed = frozenset({("p0", 1), ("d0", 1)})
    route = choose_route(groups, "tiny", 10, 10, Inflight(), exclude=failed)
    assert route.prefill is not None
    assert (route.prefill.group_id, route.decode.group_id) == ("p1", "d1")
    # Restarted by its supervisor (a newer incarnation), d0 takes the request again.
    restarted = [group("p0", P, 100), group("d0", D, 100, incarnation=2)]
    assert choose_route(restarted, "tiny", 10, 10, Inflight(), exclude=failed).decode.group_id == "d0"


def test_prefill_short_of_blocks_ranks_last_but_still_serves() -> None:
    groups = [group("p0", P, 0, per_rank=0), group("p1", P, 100, queue=7), group("d0", D, 100)]
    assert choose_route(groups, "tiny", 64, 1, Inflight()).prefill.group_id == "p1"  # type: ignore[union-attr]
    only_full = [group("p0", P, 0, per_rank=0), group("d0", D, 100)]
    assert choose_route(only_full, "tiny", 64, 1, Inflight()).prefill.group_id == "p0"  # type: ignore[union-attr]
