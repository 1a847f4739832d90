"""How the embedded stack resizes a pool (pure: no Ray, no sockets).

`check_groups` bounds a requested size by the pool's manifest bounds and the embedded cap (two
CPU cores run every rank of every group). `surplus` picks the groups a shrink removes (the
newest first, so `{role}-0` always survives). `group_idle` says when a group that no longer
receives work may be stopped without stranding a request: nothing queued or running on it,
no KV blocks in use or under a lease (a decode group may still be pulling them), and no
request the frontend has routed to it that has not ended yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeplane.api.enums import Role

# Most groups per pool the embedded stack starts, whatever the manifest allows: each EP2 group
# is two rank actors and a gRPC server on a laptop-sized CPU.
EMBEDDED_MAX_GROUPS = 4


class ScaleError(ValueError):
    """A pool size the embedded stack cannot run (names the pool and the bounds)."""


@dataclass(frozen=True)
class GroupLoad:
    """What a group still holds: from its Stats RPC and the frontend's in-flight routes."""

    queue_depth: int
    num_used_blocks: int
    num_leased_blocks: int
    frontend_inflight: int


def check_groups(role: Role, groups: int, min_groups: int, max_groups: int) -> int:
    """`groups` if it is within [max(1, min_groups) for decode, max_groups], else ScaleError."""
    low = max(min_groups, 1 if role is Role.DECODE else 0)
    high = min(max_groups, EMBEDDED_MAX_GROUPS)
    if not low <= groups <= high:
        raise ScaleError(
            f"spec.{role}: {groups} groups is outside the embedded bounds [{low}, {high}] "
            f"(minReplicas {min_groups}, maxReplicas {max_groups}, embedded cap {EMBEDDED_MAX_GROUPS})"
        )
    return groups


def group_index(group_id: str) -> int:
    """The index in `{role}-{index}`."""
    return int(group_id.rsplit("-", 1)[1])


def surplus(group_ids: list[str], groups: int) -> list[str]:
    """The groups to stop to keep `groups` of them: the highest indices."""
    ordered = sorted(group_ids, key=group_index)
    return ordered[groups:]


def next_indices(group_ids: list[str], count: int) -> list[int]:
    """`count` indices no running group uses, lowest first."""
    used = {group_index(g) for g in group_ids}
    out: list[int] = []
    i = 0
    while len(out) < count:
        if i not in used:
            out.append(i)
        i += 1
    return out


def group_idle(load: GroupLoad) -> bool:
    return (
        load.queue_depth == 0
        and load.num_used_blocks == 0
        and load.num_leased_blocks == 0
        and load.frontend_inflight == 0
    )
