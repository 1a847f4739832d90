"""The operator's view of serving: which EP groups are registered (and in which state) in a
deployment's Redis worker registry, and the drain requests it hands the pools' supervisors.

Protocol (keys of `DeploymentKeys`): the operator writes a group id into `drain_requests`; the pool
that runs the group drains it (it takes no new requests, finishes the ones it holds), stops it, and
writes the id into `drained`. The operator then deletes exactly that group's pods and removes both
entries (`forget`). Redis is read fresh on every pool reconcile; when it cannot be read the pool
changes nothing (no drain, no removal) and its status keeps what it last showed.

`cluster_views` joins the RayClusters, their worker pods (KubeRay's replica labels) and the
registry into `rollout.ClusterView`s. Pure; the I/O is `GroupBook`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from moeplane.api import podcontract as pc
from moeplane.operator import names
from moeplane.operator.rollout import ClusterView, Slot, SlotState, slot_state

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.registry import WorkerGroup, WorkerRegistry

log = logging.getLogger(__name__)

RAY_CLUSTER_LABEL = "ray.io/cluster"
RAY_NODE_TYPE_LABEL = "ray.io/node-type"


@dataclass(frozen=True)
class RegistryReading:
    """A deployment's registered groups (heartbeat alive) and its drain bookkeeping."""

    groups: Mapping[str, WorkerGroup]  # heartbeat alive
    requested: frozenset[str]
    drained: frozenset[str]
    recorded: frozenset[str] = frozenset()  # every id with a registration, heartbeat alive or not

    @property
    def bookkept(self) -> frozenset[str]:
        return self.requested | self.drained


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class GroupBook:
    """Reads the registry and writes drain requests in the Redis at `redis_url` (one client)."""

    def __init__(self, redis_url: str, timeout_s: float = 2.0) -> None:
        self._url = redis_url
        self._timeout_s = timeout_s
        self._client: aioredis.Redis | None = None

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s
            )
        return self._client

    async def read(self, namespace: str, deployment: str) -> RegistryReading | None:
        keys = DeploymentKeys(namespace, deployment)
        client = self._redis()
        try:

            async def both() -> tuple[list[WorkerGroup], list[Any], list[Any], list[Any]]:
                groups = await WorkerRegistry(client, keys).groups()  # any state, heartbeat alive
                return (
                    groups,
                    await client.hkeys(keys.workers()),
                    await client.hkeys(keys.drain_requests()),
                    await client.hkeys(keys.drained()),
                )

            groups, recorded, requested, drained = await asyncio.wait_for(both(), 3 * self._timeout_s)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            log.info("registry of %s/%s unreadable: %s", namespace, deployment, exc)
            return None
        return RegistryReading(
            {g.group_id: g for g in groups},
            frozenset(_text(r) for r in requested),
            frozenset(_text(d) for d in drained),
            frozenset(_text(r) for r in recorded),
        )

    async def request_drain(self, namespace: str, deployment: str, group_ids: Iterable[str]) -> None:
        ids = list(group_ids)
        if ids:
            value = json.dumps({"at_s": round(time.time(), 3)})
            await self._redis().hset(
                DeploymentKeys(namespace, deployment).drain_requests(), mapping=dict.fromkeys(ids, value)
            )

    async def forget(self, namespace: str, deployment: str, group_ids: Iterable[str]) -> None:
        ids = list(group_ids)
        if ids:
            keys = DeploymentKeys(namespace, deployment)
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.hdel(keys.drain_requests(), *ids)
                pipe.hdel(keys.drained(), *ids)
                await pipe.execute()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _unscheduled(pod: Mapping[str, Any]) -> str:
    """Why a Pending pod does not run ("" when it runs, or nothing says why)."""
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending"):
        return ""
    for cond in status.get("conditions") or ():
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            reason = cond.get("reason") or "Unschedulable"
            return f"pod {pod['metadata']['name']} {reason}: {cond.get('message', '')}".rstrip(": ")
    return ""


def cluster_views(
    pool: str,
    current_name: str,
    rayclusters: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    reading: RegistryReading,
) -> list[ClusterView]:
    """Each RayCluster of the pool with its replica groups' pods and serving states (the current
    revision's RayCluster first, whether it exists yet or not)."""
    workers: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        labels = _labels(pod)
        if labels.get(RAY_NODE_TYPE_LABEL) == "worker" and labels.get(RAY_CLUSTER_LABEL):
            workers.setdefault(labels[RAY_CLUSTER_LABEL], []).append(pod)
    views = []
    for rc in rayclusters:
        meta = rc.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        name = str(meta["name"])
        revision = str(_labels(rc).get(names.REVISION_LABEL, ""))
        group = ((rc.get("spec") or {}).get("workerGroupSpecs") or [{}])[0]
        to_delete = tuple(str(p) for p in (group.get("scaleStrategy") or {}).get("workersToDelete") or ())
        mine = workers.get(name, [])
        by_index: dict[int, list[Mapping[str, Any]]] = {}
        for pod in mine:
            label = _labels(pod).get(pc.RAY_REPLICA_INDEX_LABEL, "")
            if (
                label.isdigit()
                and pod["metadata"]["name"] not in to_delete
                and not pod["metadata"].get("deletionTimestamp")
            ):
                by_index.setdefault(int(label), []).append(pod)
        slots = []
        for index, members in sorted(by_index.items()):
            gid = pc.group_id(pool, revision, index)
            state, message = slot_state(
                gid, reading.groups, reading.requested, reading.drained, reading.recorded
            )
            if state is SlotState.NEW:
                message = next((m for m in map(_unscheduled, members) if m), "")
            slots.append(
                Slot(index, gid, tuple(sorted(p["metadata"]["name"] for p in members)), state, message)
            )
        views.append(
            ClusterView(
                name=name,
                revision=revision,
                current=name == current_name,
                replicas=int(group.get("replicas") or 0),
                workers_to_delete=to_delete,
                pods=frozenset(str(p["metadata"]["name"]) for p in mine),
                slots=tuple(slots),
            )
        )
    if not any(v.current for v in views):
        views.insert(0, ClusterView(current_name, "", True, 0, (), frozenset(), ()))
    return sorted(views, key=lambda v: not v.current)
