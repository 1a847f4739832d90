"""PoolBalancer against a real redis-server: start-up placement, measuring, publishing a
rebalance, and two groups of one pool converging on one placement."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
import torch
from moeplane.api.enums import EplbMode, Role
from moeplane.api.spec import EplbSpec
from moeplane.workers.eplb.controller import ControllerConfig, Keep, KeepReason, Rebalance
from moeplane.workers.eplb.counter import ExpertLoadCounter
from moeplane.workers.eplb.online import GroupEplb, PoolBalancer
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement

from moeplane.bus.keys import DeploymentKeys

pytestmark = pytest.mark.integration

LAYERS, EXPERTS, SLOTS, RANKS = 2, 8, 12, 2


def config(url: str, keys: DeploymentKeys, mode: EplbMode = EplbMode.ONLINE) -> GroupEplb:
    balance = ControllerConfig(threshold=0.9, num_groups=2, num_nodes=1, num_gpus=RANKS, min_steps=4)
    return GroupEplb(mode, url, keys, window_s=10.0, interval_s=10.0, balance=balance, publish_s=1.0)


@pytest.fixture
def keys(redis_server) -> Iterator[DeploymentKeys]:
    keys = DeploymentKeys("ns", f"online-{uuid.uuid4().hex[:8]}")
    yield keys
    client = redis.Redis.from_url(redis_server.url)
    for key in client.scan_iter(match=keys.pattern()):
        client.delete(key)
    client.close()


def skewed_windows(placement: Placement, steps: int = 6):
    """Both ranks route most tokens to expert 5 (slot 5, its only replica, on rank 0)."""
    out = []
    for rank in range(RANKS):
        counter = ExpertLoadCounter(rank, placement, num_buckets=2, bucket_steps=100)
        for _ in range(steps):
            for layer in range(LAYERS):
                counter.record(layer, torch.tensor([5] * 30 + [3, 6, 7, 11]))
            counter.end_step()
        out.append(counter.window())
    return out


def test_first_group_publishes_its_start_and_a_joining_group_adopts_the_pool_placement(
    redis_server, keys
) -> None:
    first = PoolBalancer(config(redis_server.url, keys), Role.DECODE)
    start = Placement.identity(LAYERS, EXPERTS, SLOTS)
    assert first.initial(start) is start
    assert first.store.read_placement() is not None
    newer = Placement.from_phy2log(start.phy2log.flip(1), EXPERTS, version=3)
    assert first.store.publish_placement(newer)
    joining = PoolBalancer(config(redis_server.url, keys), Role.DECODE)
    assert joining.initial(start).version == 3
    static = PoolBalancer(config(redis_server.url, keys, EplbMode.STATIC), Role.DECODE)
    assert static.initial(start) is start  # static mode runs its load file's placement
    for b in (first, joining, static):
        b.close()


def test_tick_measures_publishes_a_rebalance_and_the_other_group_follows(redis_server, keys) -> None:
    a = PoolBalancer(config(redis_server.url, keys), Role.DECODE)
    b = PoolBalancer(config(redis_server.url, keys), Role.DECODE)
    start = a.initial(Placement.identity(LAYERS, EXPERTS, SLOTS))
    idle = a.tick(start)  # no windows yet
    assert idle.target is None and idle.measured is None
    assert isinstance(idle.decision, Keep) and idle.decision.reason is KeepReason.NO_DATA
    a.publish_windows("g0", skewed_windows(start))
    b.publish_windows("g1", skewed_windows(start))

    result = a.tick(start)
    assert isinstance(result.decision, Rebalance) and result.target is result.decision.placement
    assert result.target.version == 1 and result.measured is not None and result.measured < 0.7
    assert result.decision.expected_after > result.decision.expected_before + 0.2
    status = a.store.read_status()
    assert status.placement_version == 1 and status.balancedness_version == 0
    assert status.balancedness == pytest.approx(result.measured)

    # The other group still runs v0: it adopts v1 instead of publishing its own.
    follow = b.tick(start)
    assert follow.decision is None and follow.target is not None
    assert torch.equal(follow.target.phy2log, result.target.phy2log)
    a.close()
    b.close()


def test_static_mode_measures_but_never_moves(redis_server, keys) -> None:
    static = PoolBalancer(config(redis_server.url, keys, EplbMode.STATIC), Role.PREFILL)
    start = static.initial(Placement.identity(LAYERS, EXPERTS, SLOTS))
    static.publish_windows("p0", skewed_windows(start))
    result = static.tick(start)
    assert result.target is None and result.decision is None
    assert result.measured is not None and result.measured < 0.7
    assert static.store.read_status().balancedness == pytest.approx(result.measured)
    static.close()


def test_settings_from_the_spec_and_their_errors() -> None:
    keys = DeploymentKeys("ns", "d")
    assert GroupEplb.from_spec(EplbSpec(mode=EplbMode.OFF), "redis://x", keys, 4, 2) is None
    spec = EplbSpec(mode="online", algorithm="global", windowSeconds=8, intervalSeconds=20,
                    balancednessThreshold=0.85)
    got = GroupEplb.from_spec(spec, "redis://x", keys, 4, 2)
    assert got is not None and got.balance.threshold == 0.85 and got.balance.algorithm == "global"
    assert got.publish_period_s == 2.0  # a quarter window
    with pytest.raises(EplbError, match="interval_s must be > 0"):
        GroupEplb(EplbMode.ONLINE, "redis://x", keys, 1.0, 0.0, got.balance)
    with pytest.raises(EplbError, match="mode off"):
        GroupEplb(EplbMode.OFF, "redis://x", keys, 1.0, 1.0, got.balance)
