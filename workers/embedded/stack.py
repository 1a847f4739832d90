"""`EmbeddedStack`: the whole product on 127.0.0.1, no cluster (`moeplane up`, `moeplane demo`).

Start order: a private redis-server, local Ray, the serving groups (each a `GroupController`
with its gRPC control service in this process and one Ray actor per EP rank), a heartbeat per
group into the Redis registry, then the frontend, which is ready once the router sees a live
group of each role. `stop()` undoes it in reverse: nothing it started survives it, Ray's
processes and redis-server included.

Each group runs on its pool's planned placement (`redundantExperts` extra slots, or the static
load file's placement) and, unless `spec.eplb.mode` is off, counts its expert load into Redis;
in online mode its controller also rebalances (see `moeplane.workers.eplb.driver`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import ray
from moeplane.api.enums import Role
from moeplane.workers.embedded.plan import EmbeddedPlan, PoolPlan
from moeplane.workers.eplb.online import GroupEplb
from moeplane.workers.frontend.app import FrontendConfig
from moeplane.workers.frontend.server import FrontendServer
from moeplane.workers.kv.security import GrpcSecurity
from moeplane.workers.model.tokenizer import tokenizer_for
from moeplane.workers.registry.client import async_redis
from moeplane.workers.registry.groups import WorkerRegistry
from moeplane.workers.registry.heartbeat import Heartbeat
from moeplane.workers.registry.registrar import stats_snapshot
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.client import WorkerControlClient
from moeplane.workers.serving.config import Role as EngineRole
from moeplane.workers.serving.controller import GroupController, GroupSpec
from moeplane.workers.serving.engine import EngineConfig
from moeplane.workers.serving.service import ControlServer

from moeplane.local_redis import LocalRedis

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class StackOptions:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    ray_num_cpus: int | None = None  # None: Ray's own count
    cpus_per_rank: float = 0.25
    request_timeout_s: float = 300.0
    heartbeat_s: float = 1.0
    registry_ttl_s: float = 5.0
    start_timeout_s: float = 300.0
    redis_url: str | None = None  # None: start a private redis-server
    eplb_publish_s: float | None = None  # load-window uploads; None: a quarter of spec.eplb's window


@dataclass(frozen=True)
class RunningGroup:
    group_id: str
    role: Role
    address: str


class EmbeddedStack:
    def __init__(self, plan: EmbeddedPlan, options: StackOptions | None = None) -> None:
        self.plan = plan
        self.options = options or StackOptions()
        self.security = GrpcSecurity()
        self.redis: LocalRedis | None = None
        self.redis_url = ""
        self.frontend: FrontendServer | None = None
        self.groups: list[RunningGroup] = []
        self._servers: list[ControlServer] = []
        self._beats: list[Heartbeat] = []
        self._clients: list[WorkerControlClient] = []
        self._registry: WorkerRegistry | None = None
        self._owns_ray = False

    @property
    def url(self) -> str:
        return self.frontend.url if self.frontend is not None else ""

    @property
    def servers(self) -> dict[str, ControlServer]:
        """Each running group's control server by group id (tests stop one to fake a crash)."""
        return {g.group_id: s for g, s in zip(self.groups, self._servers, strict=True)}

    async def start(self, progress: Progress = lambda _: None) -> EmbeddedStack:
        try:
            await self._start(progress)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self, progress: Progress) -> None:
        opts, plan = self.options, self.plan
        if opts.redis_url is None:
            progress("starting a private redis-server")
            self.redis = await asyncio.to_thread(LocalRedis().start)
            self.redis_url = self.redis.url
        else:
            self.redis_url = opts.redis_url
        if not ray.is_initialized():
            progress("starting local Ray")
            # On this thread: Ray installs its signal handlers only from the main thread.
            # address="local": always a new private instance, never someone else's cluster.
            ray.init(
                address="local", num_cpus=opts.ray_num_cpus, include_dashboard=False, log_to_driver=False,
                configure_logging=False,
            )
            self._owns_ray = True

        specs = [
            self._group_spec(pool, i) for pool in (plan.prefill, plan.decode) for i in range(pool.num_groups)
        ]
        progress(f"starting {len(specs)} groups ({sum(s.ep_size for s in specs)} rank actors)")
        self._servers = [ControlServer(GroupController(s), self.security) for s in specs]
        addresses = await asyncio.wait_for(
            asyncio.gather(*(srv.start(opts.host) for srv in self._servers)), opts.start_timeout_s
        )
        self.groups = [
            RunningGroup(s.group_id, Role(s.role.value), a) for s, a in zip(specs, addresses, strict=True)
        ]

        redis_client = async_redis(self.redis_url)
        self._registry = WorkerRegistry(redis_client, plan.keys, ttl_s=opts.registry_ttl_s)
        for g in self.groups:
            client = WorkerControlClient(g.address, self.security)
            self._clients.append(client)
            snapshot = stats_snapshot(client, g.address, plan.served_model)
            beat = Heartbeat(self._registry, snapshot, opts.heartbeat_s)
            self._beats.append(beat)
            beat.start()

        progress("starting the frontend")
        config = FrontendConfig(
            served_model=plan.served_model, max_model_len=plan.max_model_len,
            request_timeout_s=opts.request_timeout_s,
        )
        self.frontend = FrontendServer(
            config, self.redis_url, plan.keys, tokenizer_for(plan.arch), self.security,
            registry_ttl_s=opts.registry_ttl_s,
        )
        await self.frontend.start(opts.host, opts.port)
        roles = [Role.DECODE] + ([Role.PREFILL] if plan.prefill.num_groups else [])
        await self.frontend.cache.wait_for(roles, timeout_s=30.0)

    def _group_spec(self, pool: PoolPlan, index: int) -> GroupSpec:
        plan = self.plan
        role = EngineRole(pool.role.value)
        engine = EngineConfig(
            role=role, num_blocks=pool.num_blocks_per_rank, block_size=pool.block_size_tokens,
            scheduler=plan.scheduler, lease_s=plan.lease_s,
        )
        rank = RankSpec(
            arch=plan.arch, weights=plan.weights_seed, engine=engine, placement=pool.placement,
            kv_chunk_bytes=plan.kv_chunk_bytes, bind_host=self.options.host, security=self.security,
        )
        eplb = GroupEplb.from_spec(
            plan.eplb, self.redis_url, plan.keys, plan.arch.n_group, pool.ep_size,
            publish_s=self.options.eplb_publish_s,
        )
        return GroupSpec(
            f"{pool.role}-{index}", role, pool.ep_size, rank, self.options.cpus_per_rank, eplb=eplb
        )

    async def stop(self) -> None:
        """Tear down in reverse order; safe to call after a failed or partial start."""
        if self.frontend is not None:
            await self.frontend.stop()
            self.frontend = None
        for beat in self._beats:
            await beat.stop(deregister=True)
        self._beats = []
        if self._registry is not None:
            await self._registry.client.aclose()
            self._registry = None
        for client in self._clients:
            await client.close()
        self._clients = []
        results = await asyncio.gather(*(srv.stop() for srv in self._servers), return_exceptions=True)
        for err in results:
            if isinstance(err, BaseException):
                log.warning("a serving group did not stop cleanly: %s", err)
        self._servers = []
        self.groups = []
        if self._owns_ray:
            await asyncio.to_thread(ray.shutdown)
            self._owns_ray = False
        if self.redis is not None:
            await asyncio.to_thread(self.redis.close)
            self.redis = None
