"""The group supervisor on its own (real Ray rank actors, a real redis-server, one-rank groups): a
group registers as starting, goes live only after its health probe, carries its pool's identity;
stopping it deregisters it and fences its last incarnation, so a heartbeat still in flight cannot
bring it back; a group that cannot start is retried, then refused with the reason named."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest
from moeplane.api.enums import Role
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest, plan_from_deployment
from moeplane.workers.model.weights import SafetensorsWeights
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.config import SchedulerConfig
from moeplane.workers.serving.controller import GroupSpec
from moeplane.workers.serving.engine import EngineConfig
from moeplane.workers.supervisor.group import PoolIdentity
from moeplane.workers.supervisor.placement import LocalCpuShares
from moeplane.workers.supervisor.policy import RestartPolicy
from moeplane.workers.supervisor.supervisor import GroupStartError, GroupSupervisor, SupervisorOptions

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import GroupState, WorkerRegistry

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

PLAN = plan_from_deployment(load_manifest(DEFAULT_MANIFEST), max_model_len=256)


@dataclass(frozen=True)
class OneRankGroups:
    """A `GroupLauncher` of one-rank decode groups of the tiny model."""

    weights: object = 0
    placement: LocalCpuShares = field(default_factory=LocalCpuShares)

    def group_spec(self, index: int) -> GroupSpec:
        engine = EngineConfig(
            role=Role.DECODE, num_blocks=32, block_size=16, scheduler=SchedulerConfig(max_model_len=256)
        )
        rank = RankSpec(arch=PLAN.arch, weights=self.weights, engine=engine)  # type: ignore[arg-type]
        return GroupSpec(f"sup-decode-{index}", Role.DECODE, 1, rank, 0.25)


@pytest.fixture
async def registry(redis_server):
    client = async_redis(redis_server.url)
    yield WorkerRegistry(client, DeploymentKeys("test", f"sup-{uuid.uuid4().hex[:8]}"), ttl_s=5)
    await client.aclose()


async def test_live_after_its_probe_then_stopped_and_fenced(ray_local, registry: WorkerRegistry) -> None:
    pool = PoolIdentity(Role.DECODE, "tiny-decode", "tiny", revision="r1")
    sup = GroupSupervisor(pool, OneRankGroups(), registry, options=SupervisorOptions(heartbeat_s=0.5))
    try:
        await sup.scale(1, strict=True)
        g = sup.groups[0]
        assert g.state is GroupState.LIVE and g.controller.healthy
        (record,) = await registry.live_groups()
        assert (record.group_id, record.pool, record.revision, record.restarts) == (
            "sup-decode-0", "tiny-decode", "r1", 0
        )
        assert record.incarnation == g.incarnation and record.kv_blocks_total == 32
        # Its heartbeat carries the group's own numbers (and the supervisor's state).
        assert g.beat is not None and await g.beat.beat_once()
        stale = await g.snapshot()
        await sup.scale(0)  # drained (nothing to wait for) and stopped
        assert sup.groups == {} and await registry.groups() == []
        # A heartbeat that snapshotted the group before it stopped cannot register it again.
        assert not await registry.publish(stale)
        assert await registry.groups() == []
    finally:
        await sup.stop()


async def test_a_group_that_cannot_start_is_retried_then_refused_naming_why(
    ray_local, registry: WorkerRegistry, tmp_path
) -> None:
    missing = tmp_path / "no-such-checkpoint"
    launcher = OneRankGroups(weights=SafetensorsWeights(missing))
    options = SupervisorOptions(restart=RestartPolicy(max_restarts=1, initial_backoff_s=0.01))
    sup = GroupSupervisor(PoolIdentity(Role.DECODE, "d", "tiny"), launcher, registry, options=options)
    try:
        with pytest.raises(GroupStartError, match=r"group sup-decode-0 did not start: .*no-such-checkpoint"):
            await sup.scale(1, strict=True)
    finally:
        await sup.stop()
    assert sup.groups == {} and await registry.groups() == []

