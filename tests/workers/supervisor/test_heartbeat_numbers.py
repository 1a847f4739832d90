"""A live group's heartbeat survives a slow Stats call (workers/supervisor/group.py): whether the
group is alive is the liveness probe's verdict, so its registration must not lapse because one
Stats answer was late on a busy host. The last numbers stand in, for a bounded time."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from moeplane.api.enums import Role
from moeplane.protos import worker_control_pb2 as pb
from moeplane.workers.serving.client import WorkerControlError
from moeplane.workers.supervisor import group as group_mod
from moeplane.workers.supervisor.group import PoolIdentity, SupervisedGroup

from moeplane.bus.registry import GroupState


class SlowStats:
    """The supervisor's control client, reduced to Stats: answers, or times out when told to."""

    def __init__(self) -> None:
        self.late = False

    async def stats(self, timeout_s: float) -> pb.StatsResponse:
        if self.late:
            raise WorkerControlError(grpc.StatusCode.DEADLINE_EXCEEDED, f"Stats took over {timeout_s} s")
        rank = pb.RankStats(rank=0, num_blocks=100, num_used_blocks=40)
        return pb.StatsResponse(
            role=pb.ROLE_DECODE, group_id="decode-0", block_size=16, num_free_blocks=60, num_used_blocks=40,
            ranks=[rank],
        )


def live_group() -> tuple[SupervisedGroup, SlowStats]:
    spec: Any = SimpleNamespace(group_id="decode-0")
    g = SupervisedGroup(0, spec, PoolIdentity(Role.DECODE, "decode", "tiny"), None, None)  # type: ignore[arg-type]
    client = SlowStats()
    g.client = client  # type: ignore[assignment]
    g.address = "127.0.0.1:1"
    g.transition(GroupState.LIVE, "")
    return g, client


@pytest.mark.unit
async def test_a_late_stats_answer_repeats_the_last_numbers() -> None:
    g, client = live_group()
    fresh = await g.snapshot()
    client.late = True
    stale = await g.snapshot()
    assert stale.state is GroupState.LIVE and stale.kv_blocks_free == fresh.kv_blocks_free == 60
    # The numbers keep their own time, so routers count the reservations made since then.
    assert stale.heartbeat_at_s == fresh.heartbeat_at_s


@pytest.mark.unit
async def test_without_recent_numbers_the_registration_lapses(monkeypatch: pytest.MonkeyPatch) -> None:
    g, client = live_group()
    client.late = True
    with pytest.raises(WorkerControlError):  # never answered: nothing to stand in
        await g.snapshot()
    client.late = False
    await g.snapshot()
    client.late = True
    later = time.time() + group_mod.STALE_NUMBERS_S + 1
    monkeypatch.setattr(group_mod.time, "time", lambda: later)
    with pytest.raises(WorkerControlError):  # too old to stand in
        await g.snapshot()


@pytest.mark.unit
async def test_a_restart_forgets_the_numbers() -> None:
    g, client = live_group()
    await g.snapshot()
    g.transition(GroupState.RESTARTING, "rank 0 died")
    g.transition(GroupState.LIVE, "")
    client.late = True
    with pytest.raises(WorkerControlError):
        await g.snapshot()
