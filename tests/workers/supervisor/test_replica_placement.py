"""`ReplicaPlacement`: on KubeRay, group g's ranks go to replica g's Ray nodes (rank r on host
r // gpusPerNode), by node label selectors; a Ray cluster without replica labels places by resources."""

from __future__ import annotations

import pytest
from moeplane.api import podcontract as pc
from moeplane.api.enums import Role
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest, plan_from_deployment
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.controller import GroupSpec
from moeplane.workers.serving.engine import EngineConfig
from moeplane.workers.serving.scheduler import SchedulerConfig
from moeplane.workers.supervisor.placement import PoolResources, ReplicaPlacement, replica_index

pytestmark = pytest.mark.unit


def _spec(group_id: str, ep: int, device: str = "cpu") -> GroupSpec:
    plan = plan_from_deployment(load_manifest(DEFAULT_MANIFEST), max_model_len=256)
    engine = EngineConfig(
        role=Role.DECODE, num_blocks=32, block_size=16, scheduler=SchedulerConfig(max_model_len=256)
    )
    rank = RankSpec(arch=plan.arch, weights=0, engine=engine, device=device)
    return GroupSpec(group_id, Role.DECODE, ep, rank, 1.0)


def test_group_ids_end_with_their_replica_index() -> None:
    assert replica_index(pc.group_id("tiny-decode", "ab12cd34", 5)) == 5
    assert replica_index("tiny-decode-g12") == 12
    assert replica_index("decode") is None and replica_index("x-gy") is None


def test_ranks_go_to_their_replica_and_host() -> None:
    spec = _spec(pc.group_id("big-decode", "ab12cd34", 3), ep=16)
    placement = ReplicaPlacement(ranks_per_host=8, hosts_per_group=2, bound=True)
    for rank, host in ((0, "0"), (7, "0"), (8, "1"), (15, "1")):
        options = placement.actor_options(spec, rank)
        assert options["label_selector"] == {pc.NODE_REPLICA_LABEL: "3", pc.NODE_HOST_LABEL: host}
        assert options["num_cpus"] == PoolResources().actor_options(spec, rank)["num_cpus"]


def test_single_host_groups_select_the_replica_only() -> None:
    spec = _spec(pc.group_id("tiny-decode", "ab12cd34", 1), ep=2)
    options = ReplicaPlacement(ranks_per_host=2, hosts_per_group=1, bound=True).actor_options(spec, 1)
    assert options["label_selector"] == {pc.NODE_REPLICA_LABEL: "1"}


def test_without_replica_labels_ranks_go_where_ray_finds_room() -> None:
    spec = _spec(pc.group_id("tiny-decode", "ab12cd34", 1), ep=2)
    unbound = ReplicaPlacement(ranks_per_host=2, hosts_per_group=1)
    assert unbound.actor_options(spec, 0) == PoolResources().actor_options(spec, 0)
