"""A group's Stats answer -> its registry record (pure)."""

from __future__ import annotations

import pytest
from moeplane.api.enums import Role
from moeplane.protos import worker_control_pb2 as pb
from moeplane.workers.registry.registrar import group_from_stats

pytestmark = pytest.mark.unit


def _stats(role: int = pb.ROLE_DECODE) -> pb.StatsResponse:
    return pb.StatsResponse(
        role=role, group_id="decode-3", block_size=16, num_free_blocks=150, num_used_blocks=106,
        queue_depth=4,
        ranks=[pb.RankStats(rank=0, num_blocks=128, num_used_blocks=100),
               pb.RankStats(rank=1, num_blocks=128, num_used_blocks=6)],
    )


def test_record_from_stats() -> None:
    g = group_from_stats(_stats(), "10.0.0.7:5000", "tiny", at_s=12.5)
    assert (g.group_id, g.role, g.address) == ("decode-3", Role.DECODE, "10.0.0.7:5000")
    assert (g.model, g.ep_size) == ("tiny", 2)
    assert (g.kv_blocks_total, g.kv_blocks_free, g.max_blocks_per_rank) == (256, 150, 122)
    assert (g.block_size_tokens, g.queue_depth, g.heartbeat_at_s) == (16, 4, 12.5)
    assert g.blocks_for(33) == 3


def test_a_group_without_a_role_is_refused() -> None:
    with pytest.raises(ValueError, match="reports no role"):
        group_from_stats(_stats(pb.ROLE_UNSPECIFIED), "h:1", "tiny", 0.0)
