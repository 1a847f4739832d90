"""`PoolRunner`: a pool's Ray head process. It runs the pool's `GroupSupervisor` (the same one
`moeplane up` runs), whose groups' control services live in this process and whose rank actors run
on the cluster's worker nodes.

Every `reconcile_s` it sizes the pool to the groups that fit the Ray cluster (`plan.groups_that_fit`,
or `--groups`): a scale-up starts groups, a scale-down drains the highest ones (they refuse new
requests and finish theirs) before stopping them. Failed groups are the supervisor's: it restarts
them as a unit with backoff and marks them failed, with the reason, in the registry (the operator's
MoEPool status reads it). `stop()` deregisters every group first, so routers stop sending work
before the ranks go away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from moeplane.workers.pool.plan import PoolOptions, group_spec, groups_that_fit
from moeplane.workers.pool.settings import PoolSettings
from moeplane.workers.serving.controller import GroupSpec
from moeplane.workers.supervisor.group import PoolIdentity, SupervisedGroup
from moeplane.workers.supervisor.placement import PoolResources
from moeplane.workers.supervisor.supervisor import GroupSupervisor, SupervisorOptions

from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import WorkerRegistry

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def cluster_resources() -> list[dict[str, float]]:
    """Total resources of each alive Ray node."""
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


@dataclass(frozen=True)
class _Launcher:
    """The Kubernetes `GroupLauncher`: the pool's group specs; ranks on the cluster's resources
    (the binding of group g to KubeRay replica g belongs in the placement: see PoolResources)."""

    settings: PoolSettings
    options: PoolOptions
    placement: PoolResources = field(default_factory=PoolResources)

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

    @property
    def groups(self) -> dict[int, SupervisedGroup]:
        """The supervisor's groups by index (any state)."""
        return {} if self.supervisor is None else dict(self.supervisor.groups)

    def desired_groups(self) -> int:
        if self.options.groups is not None:
            return self.options.groups
        return groups_that_fit(cluster_resources(), self.settings, self.options)

    async def start(self) -> PoolRunner:
        s, opts = self.settings, self.options
        self._registry = WorkerRegistry(async_redis(s.redis_url), s.keys, ttl_s=opts.registry_ttl_s)
        sup_opts = self.supervisor_options or SupervisorOptions(
            host=opts.host, advertise_host=s.advertise_host or _routable(opts.host),
            heartbeat_s=opts.heartbeat_s, probe_timeout_s=opts.start_timeout_s,
        )
        identity = PoolIdentity(s.role, s.pool_name, s.served_model, s.revision)
        self.supervisor = GroupSupervisor(
            identity, _Launcher(s, opts), self._registry, s.security, sup_opts, self.progress
        )
        return self

    async def reconcile_once(self) -> None:
        """Size the pool to the groups that fit; a group that does not start stays with the
        supervisor's restart policy."""
        if self.supervisor is None:
            raise RuntimeError("PoolRunner.start() has not run")
        await self.supervisor.scale(self.desired_groups())

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until `stop` is set, then stop every group."""
        try:
            while not stop.is_set():
                await self.reconcile_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.options.reconcile_s)
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
            self.supervisor = None
        if self._registry is not None:
            await self._registry.client.aclose()
            self._registry = None


def _routable(host: str) -> str | None:
    """The address peers use when none is configured: the node's own IP for a wildcard bind."""
    return ray.util.get_node_ip_address() if host in ("0.0.0.0", "") else None
