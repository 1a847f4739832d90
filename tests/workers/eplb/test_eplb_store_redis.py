"""EplbStore against a real redis-server: windows per rank, pool sums, placement compare-and-set."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
import torch
from moeplane.api.enums import Role
from moeplane.workers.eplb.counter import LoadWindow
from moeplane.workers.eplb.store import EplbStore
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement

from moeplane.bus.keys import DeploymentKeys

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_server) -> Iterator[EplbStore]:
    client = redis.Redis.from_url(redis_server.url)
    keys = DeploymentKeys("ns", f"eplb-{uuid.uuid4().hex[:8]}")
    yield EplbStore(client, keys, Role.DECODE)
    for key in client.scan_iter(match=keys.pattern()):
        client.delete(key)
    client.close()


def window(rank: int, version: int, scale: int, steps: int = 10) -> LoadWindow:
    logical = torch.arange(12, dtype=torch.int64).view(3, 4) * scale
    slots = torch.arange(18, dtype=torch.int64).view(3, 6) * scale
    return LoadWindow(rank, version, steps, logical, steps if version >= 0 else 0, slots)


def test_windows_round_trip_per_rank_under_the_deployment_prefix(store: EplbStore) -> None:
    store.publish_window("g0", window(0, 2, 1), now_s=100.0)
    store.publish_window("g0", window(1, 2, 3), now_s=100.0)
    key = store.keys.expert_load("decode", "g0")
    assert key.startswith(store.keys.prefix)
    assert 0 < store.client.pttl(key) <= 600_000
    got = store.read_windows("g0")
    assert [w.rank for w in got] == [0, 1]
    assert torch.equal(got[1].slot_counts, window(1, 2, 3).slot_counts)
    assert got[0].placement_version == 2 and got[0].num_steps == 10


def test_the_pool_load_sums_ranks_and_groups_and_drops_stale_windows(store: EplbStore) -> None:
    store.publish_window("g0", window(0, 2, 1), now_s=100.0)
    store.publish_window("g0", window(1, 1, 5), now_s=100.0)  # counted under an older placement
    store.publish_window("g1", window(0, 2, 2, steps=4), now_s=100.0)
    store.publish_window("g1", window(1, 2, 7), now_s=10.0)  # a rank that stopped reporting
    assert store.group_ids() == ["g0", "g1"]
    load = store.read_load(max_age_s=30.0, now_s=101.0)
    assert load is not None
    assert load.num_windows == 3 and load.num_steps == 4
    assert torch.equal(load.logical_counts, window(0, 0, 1 + 5 + 2).logical_counts)
    assert load.placement_version == 2 and load.slot_windows == 2
    assert torch.equal(load.slot_counts, window(0, 0, 1 + 2).slot_counts)
    assert store.read_load(group_ids=["nope"]) is None


def test_placements_only_move_forward(store: EplbStore) -> None:
    assert store.read_placement() is None
    v2 = Placement.from_phy2log(torch.tensor([[0, 1, 2, 0]]), 3, version=2)
    assert store.publish_placement(v2)
    older = Placement.from_phy2log(torch.tensor([[2, 1, 0, 0]]), 3, version=1)
    assert not store.publish_placement(older)
    assert not store.publish_placement(v2.with_version(2))
    got = store.read_placement()
    assert got is not None and got.version == 2 and torch.equal(got.phy2log, v2.phy2log)
    assert torch.equal(got.log2phy, v2.log2phy)


def test_a_garbled_field_is_skipped_not_fatal(store: EplbStore) -> None:
    store.publish_window("g0", window(0, 2, 1))
    store.client.hset(store.keys.expert_load("decode", "g0"), "9", b"not a window")
    assert [w.rank for w in store.read_windows("g0")] == [0]


def test_text_clients_are_refused(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(EplbError, match="decode_responses=False"):
        EplbStore(client, DeploymentKeys("ns", "d"), Role.PREFILL)
    client.close()
