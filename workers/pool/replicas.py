"""One EP group = one KubeRay replica group: which groups a pool's head runs, from its Ray nodes.

Every worker pod labels its Ray node with its KubeRay replica index (and host index in a multi-host
group): the operator's RayCluster sets `RAY_OVERRIDE_LABELS` from KubeRay's pod labels
(api/podcontract.py). Group g runs while replica g's nodes are all alive; when its pods go (a
scale-down the operator drained first, a rollout) it stops, and no other group is disturbed.
Without labelled nodes (a Ray cluster not made by KubeRay) the pool counts the groups that fit.

Drains (operator/groups.py): the operator asks for a group by id in `drain_requests`; the head
drains and stops it and answers in `drained`. A drained group is not started again on the same Ray
nodes, even once the operator has cleared its request (their pods are being deleted); a new pod
with the same replica index brings new nodes, and the group starts there.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from moeplane.api import podcontract as pc

from moeplane.bus.keys import DeploymentKeys


@dataclass(frozen=True)
class ReplicaNodes:
    """The alive Ray nodes of one replica group."""

    index: int
    node_ids: frozenset[str]
    hosts: int
    resources: float  # of the pool's unit (GPU, or CPU on a CPU pool), over the nodes


def replica_nodes(nodes: Iterable[Mapping[str, Any]], unit: str) -> dict[int, ReplicaNodes]:
    """Alive nodes labelled with a replica index, by index (`ray.nodes()` entries)."""
    found: dict[int, list[Mapping[str, Any]]] = {}
    for node in nodes:
        label = str((node.get("Labels") or {}).get(pc.NODE_REPLICA_LABEL, ""))
        if node.get("Alive") and label.isdigit():
            found.setdefault(int(label), []).append(node)
    return {
        index: ReplicaNodes(
            index,
            frozenset(str(n.get("NodeID", "")) for n in members),
            len(members),
            sum(float((n.get("Resources") or {}).get(unit, 0.0)) for n in members),
        )
        for index, members in found.items()
    }


def complete_groups(
    replicas: Mapping[int, ReplicaNodes],
    hosts_per_group: int,
    units_per_group: float,
    retired: Mapping[int, frozenset[str]],
) -> list[int]:
    """Replica indices whose group can run: all its hosts up with the group's resources, and not the
    nodes of a group drained earlier (`retired`: index -> node ids)."""
    out = []
    for index, rep in sorted(replicas.items()):
        if rep.hosts < hosts_per_group or rep.resources + 1e-9 < units_per_group:
            continue
        if rep.node_ids & retired.get(index, frozenset()):
            continue
        out.append(index)
    return out


class DrainBook:
    """The pool's side of the drain protocol, in the deployment's Redis."""

    def __init__(self, client: aioredis.Redis, keys: DeploymentKeys) -> None:
        self.client = client
        self.keys = keys

    async def requested(self) -> frozenset[str]:
        raw = await self.client.hkeys(self.keys.drain_requests())
        return frozenset(r.decode() if isinstance(r, bytes) else str(r) for r in raw)

    async def done(self, group_id: str) -> None:
        await self.client.hset(self.keys.drained(), group_id, f"{time.time():.3f}")
