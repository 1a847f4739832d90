"""`PoolRunner`: a pool's Ray head process. It keeps one `GroupController` (with its gRPC control
service) per EP group that fits the Ray cluster, each registered in the Redis worker registry by a
`Heartbeat`; the rank actors run on the cluster's worker nodes.

Every `reconcile_s` it compares the groups that fit (`plan.reconcile`) with those running: a
scale-up starts groups, a scale-down deregisters and stops the highest ones, and a failed group is
deregistered and started again. `stop()` deregisters every group first, so routers stop sending
work before the ranks go away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import ray
from moeplane.api import podcontract
from moeplane.workers.pool.plan import PoolOptions, group_spec, groups_that_fit, reconcile_indices
from moeplane.workers.pool.replicas import DrainBook, ReplicaNodes, complete_groups, replica_nodes
from moeplane.workers.pool.settings import PoolSettings
from moeplane.workers.registry.heartbeat import Heartbeat
from moeplane.workers.registry.registrar import stats_snapshot
from moeplane.workers.serving.client import WorkerControlClient
from moeplane.workers.serving.controller import GroupController
from moeplane.workers.serving.service import ControlServer

from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import GroupState, WorkerRegistry

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class RunningGroup:
    index: int
    group_id: str
    address: str  # as registered (the advertised host)
    server: ControlServer
    client: WorkerControlClient
    beat: Heartbeat

    @property
    def healthy(self) -> bool:
        return self.server.controller.healthy


def cluster_resources() -> list[dict[str, float]]:
    """Total resources of each alive Ray node."""
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


class PoolRunner:
    def __init__(
        self,
        settings: PoolSettings,
        options: PoolOptions | None = None,
        progress: Progress = lambda _: None,
    ) -> None:
        self.settings = settings
        self.options = options or PoolOptions()
        self.progress = progress
        self.groups: dict[int, RunningGroup] = {}
        self._registry: WorkerRegistry | None = None
        self._drains: DrainBook | None = None
        self._replicas: dict[int, ReplicaNodes] = {}
        self._retired: dict[int, frozenset[str]] = {}  # drained groups' nodes, by replica index
        self._acked: frozenset[str] = frozenset()  # requested groups found not running, answered
        self.ready = False

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
        if not replicas:
            return list(range(self.desired_groups()))
        self._replicas = replicas
        self._retired = {i: ids for i, ids in self._retired.items() if i in replicas}
        return complete_groups(
            replicas, self.settings.group.nodes_per_group, per_rank * self.settings.ep_size, self._retired
        )

    async def start(self) -> PoolRunner:
        redis_client = async_redis(self.settings.redis_url)
        self._registry = WorkerRegistry(redis_client, self.settings.keys, ttl_s=self.options.registry_ttl_s)
        self._drains = DrainBook(redis_client, self.settings.keys)
        return self

    async def reconcile_once(self) -> None:
        if self._drains is not None:
            requested = await self._drains.requested()
            for i in [i for i, g in self.groups.items() if g.group_id in requested]:
                await self._drain(i)
            await self._ack_idle(requested)
        else:
            requested = frozenset()
        failed = [i for i, g in self.groups.items() if not g.healthy]
        for i in failed:
            group = self.groups[i]
            log.warning("group %s failed: %s", group.group_id, group.server.controller.status_message)
        want = [i for i in self.desired_indices() if self.settings.group_id(i) not in requested]
        plan = reconcile_indices(want, self.groups, failed)
        for i in reversed(plan.stop):
            if i in failed:
                await self._stop_group(i, restarting=self.groups[i].server.controller.status_message)
            else:
                await self._stop_group(i)
        for i in plan.start:
            try:
                self.groups[i] = await self._start_group(i)
            except Exception as exc:  # retried on the next round
                log.exception("group %s did not start", self.settings.group_id(i))
                gid = self.settings.group_id(i)
                self.progress(f"group {gid} did not start ({type(exc).__name__}: {exc}); retrying")
        self.ready = set(want) <= {i for i, g in self.groups.items() if g.healthy}
        self._write_ready()

    def _write_ready(self) -> None:
        """The sidecar's readiness probe reads this file: present while every group the pool should
        run is up (0 groups: ready), absent otherwise."""
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
                await self.reconcile_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.options.reconcile_s)
        finally:
            await self.stop()

    async def _start_group(self, index: int) -> RunningGroup:
        s, opts = self.settings, self.options
        if self._registry is None:
            raise RuntimeError("PoolRunner.start() has not run")
        spec = group_spec(s, opts, index)
        self.progress(f"starting group {spec.group_id} ({spec.ep_size} ranks)")
        server = ControlServer(GroupController(spec), s.security)
        bound = await server.start(opts.host, 0)
        advertised = f"{s.advertise_host or _routable(opts.host)}:{server.port}"
        # The heartbeat asks over loopback; the registry carries the advertised address.
        local = f"127.0.0.1:{server.port}" if opts.host == "0.0.0.0" else bound
        client = WorkerControlClient(local, s.security)
        beat = Heartbeat(self._registry, stats_snapshot(client, advertised, s.served_model), opts.heartbeat_s)
        beat.start()
        self.progress(f"group {spec.group_id} serving on {advertised}")
        return RunningGroup(index, spec.group_id, advertised, server, client, beat)

    async def _drain(self, index: int) -> None:
        """Take group `index` out of service on the operator's request, then stop it: deregistered
        first, so routers stop choosing it (a frontend keeps a group up to one registry TTL after its
        last sighting), then stopped once it holds no request, or at `drain_timeout_s`."""
        group = self.groups.pop(index)
        self.progress(f"draining group {group.group_id}")
        await group.beat.stop(deregister=True)
        opts = self.options
        started = time.monotonic()
        hold_until = started + opts.registry_ttl_s + 2 * opts.heartbeat_s
        while time.monotonic() - started < opts.drain_timeout_s:
            if time.monotonic() >= hold_until and await _idle(group.client):
                break
            await asyncio.sleep(0.2)
        await group.client.close()
        try:
            await group.server.stop()
        except Exception:
            log.warning("group %s did not stop cleanly", group.group_id, exc_info=True)
        rep = self._replicas.get(index)
        if rep is not None:
            self._retired[index] = rep.node_ids
        if self._drains is not None:
            await self._drains.done(group.group_id)
            self._acked |= {group.group_id}
        self.progress(f"group {group.group_id} drained and stopped")

    async def _ack_idle(self, requested: frozenset[str]) -> None:
        """A requested group of this pool that is not running (it failed to start, or its replica
        is incomplete) is drained already: say so, and keep it stopped on those nodes."""
        s = self.settings
        self._acked &= requested
        for gid in requested - self._acked:
            index = podcontract.group_index(gid, s.pool_name, s.revision)
            if index is None or index in self.groups or self._drains is None:
                continue
            rep = self._replicas.get(index)
            if rep is not None:
                self._retired[index] = rep.node_ids
            await self._drains.done(gid)
            self._acked |= {gid}

    async def _stop_group(self, index: int, restarting: str | None = None) -> None:
        """Stop group `index`: deregistered, or (`restarting`: why it failed) left in the registry
        as restarting with its heartbeat stopped, so that routers skip it and the operator reports
        it (Degraded) until the group started again registers live under the same id."""
        group = self.groups.pop(index)
        why = f" to restart it: {restarting}" if restarting else ""
        self.progress(f"stopping group {group.group_id}{why}")
        last = group.beat.last_group
        await group.beat.stop(deregister=restarting is None)
        if restarting is not None and last is not None and self._registry is not None:
            record = last.model_copy(
                update={"state": GroupState.RESTARTING, "message": restarting or "failed"}
            )
            keys = self.settings.keys
            with contextlib.suppress(Exception):  # Redis down: its TTL lapses, which says as much
                async with self._registry.client.pipeline(transaction=True) as pipe:
                    pipe.hset(keys.workers(), group.group_id, record.model_dump_json())
                    pipe.delete(keys.worker_alive(group.group_id))
                    await pipe.execute()
        await group.client.close()
        try:
            await group.server.stop()
        except Exception:  # a dead group's actors are gone already
            log.warning("group %s did not stop cleanly", group.group_id, exc_info=True)

    async def stop(self) -> None:
        self.ready = False
        self._write_ready()
        for index in sorted(self.groups, reverse=True):
            await self._stop_group(index)
        if self._registry is not None:
            await self._registry.client.aclose()
            self._registry = None


async def _idle(client: WorkerControlClient) -> bool:
    """No request queued or running, and no KV block in use (a handoff's lease included)."""
    try:
        stats = await client.stats(timeout_s=2.0)
    except Exception:
        return True  # it does not answer: nothing of it can finish any more
    return stats.queue_depth == 0 and stats.num_used_blocks == 0


def _routable(host: str) -> str:
    """The address peers use when none is configured: the node's own IP for a wildcard bind."""
    return ray.util.get_node_ip_address() if host in ("0.0.0.0", "") else host
