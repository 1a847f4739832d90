"""workers/pool/replicas.py: a pool's groups follow its KubeRay replica groups (Ray node labels), and a
drained group is not started again on the nodes it was drained from."""

from __future__ import annotations

import pytest
from moeplane.api import podcontract as pc
from moeplane.workers.pool.plan import reconcile_indices
from moeplane.workers.pool.replicas import complete_groups, replica_nodes

pytestmark = pytest.mark.unit


def _node(node_id: str, index: str | None, cpus: float = 2.0, alive: bool = True) -> dict[str, object]:
    labels = {"ray.io/node-id": node_id} | ({pc.NODE_REPLICA_LABEL: index} if index is not None else {})
    return {"NodeID": node_id, "Alive": alive, "Labels": labels, "Resources": {"CPU": cpus}}


def test_groups_are_the_complete_replica_groups() -> None:
    nodes = [
        _node("head", None, cpus=0.0),
        _node("a", "0"),
        _node("b", "2"),
        _node("c", "3", cpus=1.0),  # too small for an EP2 group of 1-CPU ranks
        _node("d", "1", alive=False),  # its pod is gone
        _node("e", "4"), _node("f", "4"),  # a two-host replica
    ]  # fmt: skip
    replicas = replica_nodes(nodes, "CPU")
    assert sorted(replicas) == [0, 2, 3, 4] and replicas[4].hosts == 2 and replicas[4].resources == 4.0
    assert complete_groups(replicas, 1, 2.0, {}) == [0, 2, 4]
    assert complete_groups(replicas, 2, 2.0, {}) == [4]


def test_a_drained_group_stays_stopped_on_its_old_nodes_but_starts_on_new_ones() -> None:
    replicas = replica_nodes([_node("a", "0"), _node("b", "1")], "CPU")
    retired = {1: frozenset({"b"})}
    assert complete_groups(replicas, 1, 2.0, retired) == [0]
    # KubeRay gave replica index 1 to a new pod: a new Ray node, so the group starts there.
    replicas = replica_nodes([_node("a", "0"), _node("b2", "1")], "CPU")
    assert complete_groups(replicas, 1, 2.0, retired) == [0, 1]


def test_reconcile_by_index_stops_groups_whose_replica_went_and_restarts_failed_ones() -> None:
    plan = reconcile_indices([0, 2], running=[0, 1, 2], failed=[2])
    assert plan.stop == (1, 2) and plan.start == (2,)


def test_group_ids_name_pool_revision_and_replica_index() -> None:
    gid = pc.group_id("tiny-decode", "ab12cd34", 7)
    assert gid == "tiny-decode-ab12cd34-g7"
    assert pc.group_index(gid, "tiny-decode", "ab12cd34") == 7
    assert pc.group_index(gid, "tiny-decode", "00000000") is None
    assert pc.group_index("tiny-decode-ab12cd34-gx", "tiny-decode", "ab12cd34") is None


def test_group_ids_belong_to_one_pool() -> None:
    assert pc.of_pool("tiny-decode-ab12cd34-g0", "tiny-decode")
    assert pc.of_pool("tiny-decode-g3", "tiny-decode")  # no revision (embedded)
    assert not pc.of_pool("tiny-decode-ab12cd34-g0", "tiny-prefill")
    assert not pc.of_pool("tiny-decode-ab12cd34-g0", "tiny")
