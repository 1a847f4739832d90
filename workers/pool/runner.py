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
from collections.abc import Callable
from dataclasses import dataclass

import ray
from moeplane.workers.pool.plan import PoolOptions, group_spec, groups_that_fit, reconcile
from moeplane.workers.pool.settings import PoolSettings
from moeplane.workers.registry.heartbeat import Heartbeat
from moeplane.workers.registry.registrar import stats_snapshot
from moeplane.workers.serving.client import WorkerControlClient
from moeplane.workers.serving.controller import GroupController
from moeplane.workers.serving.service import ControlServer

from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import WorkerRegistry

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

    def desired_groups(self) -> int:
        if self.options.groups is not None:
            return self.options.groups
        return groups_that_fit(cluster_resources(), self.settings, self.options)

    async def start(self) -> PoolRunner:
        redis_client = async_redis(self.settings.redis_url)
        self._registry = WorkerRegistry(redis_client, self.settings.keys, ttl_s=self.options.registry_ttl_s)
        return self

    async def reconcile_once(self) -> None:
        failed = [i for i, g in self.groups.items() if not g.healthy]
        for i in failed:
            group = self.groups[i]
            log.warning("group %s failed: %s", group.group_id, group.server.controller.status_message)
        plan = reconcile(self.desired_groups(), self.groups, failed)
        for i in reversed(plan.stop):
            await self._stop_group(i)
        for i in plan.start:
            try:
                self.groups[i] = await self._start_group(i)
            except Exception as exc:  # retried on the next round
                log.exception("group %s did not start", self.settings.group_id(i))
                gid = self.settings.group_id(i)
                self.progress(f"group {gid} did not start ({type(exc).__name__}: {exc}); retrying")

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

    async def _stop_group(self, index: int) -> None:
        group = self.groups.pop(index)
        self.progress(f"stopping group {group.group_id}")
        await group.beat.stop(deregister=True)
        await group.client.close()
        try:
            await group.server.stop()
        except Exception:  # a dead group's actors are gone already
            log.warning("group %s did not stop cleanly", group.group_id, exc_info=True)

    async def stop(self) -> None:
        for index in sorted(self.groups, reverse=True):
            await self._stop_group(index)
        if self._registry is not None:
            await self._registry.client.aclose()
            self._registry = None


def _routable(host: str) -> str:
    """The address peers use when none is configured: the node's own IP for a wildcard bind."""
    return ray.util.get_node_ip_address() if host in ("0.0.0.0", "") else host
