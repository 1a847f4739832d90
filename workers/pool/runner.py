"""`PoolRunner`: a pool's Ray head process. It runs the pool's `GroupSupervisor` (the same one
`moeplane up` runs), whose groups' control services live in this process and whose rank actors run
on the cluster's worker nodes.

One EP group is one KubeRay replica group (workers/pool/replicas.py): every `reconcile_s` the pool
runs group g exactly while replica g's Ray nodes are up (their node labels carry the replica
index), and places its ranks there (`ReplicaPlacement`). A Ray cluster whose nodes carry no replica
labels runs the groups that fit (`plan.groups_that_fit`, or `--groups`), ranks wherever Ray finds
room. The operator's drain requests (a scale-down, a rollout) are served here: the group is drained
(it refuses new requests and finishes its own), stopped and reported drained, and only then does
the operator delete its pods. Failed groups are the supervisor's: it restarts them as a unit with
backoff and marks them restarting or failed, with the reason, in the registry (the operator's
MoEPool status reads it). `stop()` deregisters every group first, so routers stop sending work
before the ranks go away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from moeplane.api import podcontract
from moeplane.workers.pool.plan import PoolOptions, group_spec, groups_that_fit
from moeplane.workers.pool.replicas import DrainBook, ReplicaNodes, complete_groups, replica_nodes
from moeplane.workers.pool.settings import PoolSettings
from moeplane.workers.serving.controller import GroupSpec
from moeplane.workers.supervisor.group import PoolIdentity, SupervisedGroup
from moeplane.workers.supervisor.placement import ReplicaPlacement
from moeplane.workers.supervisor.supervisor import GroupSupervisor, SupervisorOptions

from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import GroupState, WorkerRegistry

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def cluster_resources() -> list[dict[str, float]]:
    """Total resources of each alive Ray node."""
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


@dataclass(frozen=True)
class _Launcher:
    """The Kubernetes `GroupLauncher`: the pool's group specs; group g's ranks on replica g's hosts
    once the cluster's nodes carry replica labels, else wherever Ray finds room."""

    settings: PoolSettings
    options: PoolOptions
    placement: ReplicaPlacement = field(default_factory=ReplicaPlacement)

    def group_spec(self, index: int) -> GroupSpec:
        return group_spec(self.settings, self.options, index)


class PoolRunner:
    def __init__(
        self,
        settings: PoolSettings,
        options: PoolOptions | None = None,
        progress: Progress = lambda _: None,
        supervisor_options: SupervisorOptions | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or PoolOptions()
        self.progress = progress
        self.supervisor_options = supervisor_options
        self.supervisor: GroupSupervisor | None = None
        self._registry: WorkerRegistry | None = None
        self._drains: DrainBook | None = None
        self._replicas: dict[int, ReplicaNodes] = {}
        self._retired: dict[int, frozenset[str]] = {}  # drained groups' nodes, by replica index
        self._acked: frozenset[str] = frozenset()  # drain requests answered
        layout = settings.group
        self._placement = ReplicaPlacement(
            ranks_per_host=layout.gpus_per_group // max(1, layout.nodes_per_group),
            hosts_per_group=layout.nodes_per_group,
        )
        self.ready = False

    @property
    def groups(self) -> dict[int, SupervisedGroup]:
        """The supervisor's groups by index (any state)."""
        return {} if self.supervisor is None else dict(self.supervisor.groups)

    def desired_groups(self) -> int:
        if self.options.groups is not None:
            return self.options.groups
        return groups_that_fit(cluster_resources(), self.settings, self.options)

    def desired_indices(self) -> list[int]:
        """The groups to run: one per complete KubeRay replica group (workers/pool/replicas.py), or
        0..n-1 for the n that fit a Ray cluster whose nodes carry no replica labels."""
        if self.options.groups is not None:
            return list(range(self.options.groups))
        gpu = self.settings.device == "cuda"
        unit, per_rank = ("GPU", 1.0) if gpu else ("CPU", self.options.cpus_per_rank)
        replicas = replica_nodes(ray.nodes(), unit)
        if not replicas and not self._placement.bound:
            return list(range(self.desired_groups()))  # not a KubeRay cluster (none seen so far)
        self._placement.bound = True
        self._replicas = replicas
        self._retired = {i: ids for i, ids in self._retired.items() if i in replicas}
        complete = complete_groups(
            replicas, self.settings.group.nodes_per_group, per_rank * self.settings.ep_size, self._retired
        )
        # A running group whose nodes are gone for now (a worker container restarting) stays: the
        # supervisor restarts it (restarting, Degraded) once its replica's nodes are back. Groups
        # leave only when the operator has them drained, before it removes their pods.
        return sorted(set(complete) | set(self.groups))

    async def start(self) -> PoolRunner:
        s, opts = self.settings, self.options
        self._registry = WorkerRegistry(async_redis(s.redis_url), s.keys, ttl_s=opts.registry_ttl_s)
        self._drains = DrainBook(self._registry.client, s.keys)
        sup_opts = self.supervisor_options or SupervisorOptions(
            host=opts.host, advertise_host=s.advertise_host or _routable(opts.host),
            heartbeat_s=opts.heartbeat_s, probe_timeout_s=opts.start_timeout_s,
            drain_timeout_s=opts.drain_timeout_s,
        )
        identity = PoolIdentity(s.role, s.pool_name, s.served_model, s.revision)
        self.supervisor = GroupSupervisor(
            identity, _Launcher(s, opts, self._placement), self._registry, s.security, sup_opts,
            self.progress,
        )
        return self

    async def reconcile_once(self) -> None:
        """Serve the operator's drain requests, then run one group per complete replica group; a
        group that does not start stays with the supervisor's restart policy."""
        if self.supervisor is None or self._drains is None:
            raise RuntimeError("PoolRunner.start() has not run")
        requested = await self._drains.requested()
        await self._serve_drains(requested)
        want = [i for i in self.desired_indices() if self.settings.group_id(i) not in requested]
        try:
            await self.supervisor.resize_to(want)
        finally:
            groups = self.supervisor.groups
            self.ready = all(i in groups and groups[i].state is GroupState.LIVE for i in want)
            self._write_ready()

    async def _serve_drains(self, requested: frozenset[str]) -> None:
        """Each requested group of this pool revision: drained and stopped if it runs, then
        reported drained (once); it is not started again on the same Ray nodes."""
        assert self.supervisor is not None and self._drains is not None
        s = self.settings
        self._acked &= requested
        for gid in sorted(requested - self._acked):
            index = podcontract.group_index(gid, s.pool_name, s.revision)
            if index is None:
                continue  # another revision's
            if index in self.supervisor.groups:
                self.progress(f"draining group {gid} (asked by the operator)")
                await self.supervisor.drain_and_stop(index)
            rep = self._replicas.get(index)
            if rep is not None:
                self._retired[index] = rep.node_ids
            await self._drains.done(gid)
            self._acked |= {gid}
            self.progress(f"group {gid} drained and stopped")

    def _write_ready(self) -> None:
        """The sidecar's readiness probe reads this file: present while every group the pool should
        run is live (no group: ready), absent otherwise."""
        path = self.options.ready_file
        if path is None:
            return
        if self.ready:
            with open(path, "w") as f:
                f.write(" ".join(g.group_id for g in self.groups.values()) + "\n")
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until `stop` is set, then stop every group."""
        try:
            while not stop.is_set():
                try:
                    await self.reconcile_once()
                except Exception:  # Redis or Ray hiccup: the next round tries again
                    log.exception("pool %s: reconcile failed; retrying", self.settings.pool_name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.options.reconcile_s)
        finally:
            await self.stop()

    async def stop(self) -> None:
        self.ready = False
        self._write_ready()
        if self.supervisor is not None:
            await self.supervisor.stop()
            self.supervisor = None
        if self._registry is not None:
            await self._registry.client.aclose()
            self._registry = None


def _routable(host: str) -> str | None:
    """The address peers use when none is configured: the node's own IP for a wildcard bind."""
    return ray.util.get_node_ip_address() if host in ("0.0.0.0", "") else None
