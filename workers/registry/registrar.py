"""Registration from a group's own answer: its control service's Stats RPC -> a `WorkerGroup`.

A registrar runs next to a group (in its controller's process, or in the embedded launcher) and
feeds `Heartbeat`: the numbers come from the group itself at each beat, so a group that stops
answering stops being registered.
"""

from __future__ import annotations

import time
from typing import Protocol

from moeplane.api.enums import Role
from moeplane.protos import worker_control_pb2 as pb
from moeplane.workers.registry.heartbeat import Snapshot
from moeplane.workers.serving.convert import ROLE_FROM_PB

from moeplane.bus.registry import WorkerGroup


class StatsSource(Protocol):
    async def stats(self, timeout_s: float = 30.0) -> pb.StatsResponse: ...


def group_from_stats(stats: pb.StatsResponse, address: str, model: str, at_s: float) -> WorkerGroup:
    role = ROLE_FROM_PB.get(stats.role)
    if role is None:
        raise ValueError(f"group {stats.group_id!r} at {address} reports no role ({stats.role})")
    free_per_rank = [r.num_blocks - r.num_used_blocks for r in stats.ranks]
    return WorkerGroup(
        group_id=stats.group_id,
        role=Role(role.value),
        address=address,
        model=model,
        ep_size=max(1, len(stats.ranks)),
        block_size_tokens=stats.block_size,
        kv_blocks_total=sum(r.num_blocks for r in stats.ranks),
        kv_blocks_free=stats.num_free_blocks,
        max_blocks_per_rank=max(free_per_rank, default=0),
        queue_depth=stats.queue_depth,
        num_running=sum(r.num_running for r in stats.ranks),
        num_waiting=sum(r.num_waiting for r in stats.ranks),
        num_preemptions=sum(r.num_preemptions for r in stats.ranks),
        heartbeat_at_s=at_s,
    )


def stats_snapshot(source: StatsSource, address: str, model: str, timeout_s: float = 2.0) -> Snapshot:
    """A `Heartbeat` snapshot that asks the group at `address` for its stats each beat."""

    async def snapshot() -> WorkerGroup:
        at_s = time.time()  # before the call: the numbers are at least this fresh
        return group_from_stats(await source.stats(timeout_s=timeout_s), address, model, at_s)

    return snapshot
