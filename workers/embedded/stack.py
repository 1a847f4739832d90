"""`EmbeddedStack`: the whole product on 127.0.0.1, no cluster (`moeplane up`, `moeplane demo`).

Start order: a private redis-server, local Ray, the serving groups (each a `GroupController`
with its gRPC control service in this process and one Ray actor per EP rank), a heartbeat per
group into the Redis registry, then the frontend, which is ready once the router sees a live
group of each role. `stop()` undoes it in reverse: nothing it started survives it, Ray's
processes and redis-server included.

Each group runs on its pool's planned placement (`redundantExperts` extra slots, or the static
load file's placement) and, unless `spec.eplb.mode` is off, counts its expert load into Redis;
in online mode its controller also rebalances (see `moeplane.workers.eplb.driver`).

`scale_pool` resizes a pool while it serves (the planner's embedded back end calls it): new
groups start from the same group spec and register; surplus groups first leave the registry and
the frontend's routing, then are stopped only once every request they hold has ended (bounded by
`drain_timeout_s`), so a shrink never strands a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import ray
from moeplane.api.enums import Role
from moeplane.workers.embedded.local_redis import LocalRedis
from moeplane.workers.embedded.plan import EmbeddedPlan, PoolPlan
from moeplane.workers.embedded.scaling import (
    GroupLoad,
    ScaleError,
    check_groups,
    group_idle,
    next_indices,
    surplus,
)
from moeplane.workers.eplb.online import GroupEplb
from moeplane.workers.frontend.app import FrontendConfig
from moeplane.workers.frontend.server import FrontendServer
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.model.tokenizer import load_tokenizer
from moeplane.workers.registry.heartbeat import Heartbeat
from moeplane.workers.registry.registrar import stats_snapshot
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.client import WorkerControlClient
from moeplane.workers.serving.config import Role as EngineRole
from moeplane.workers.serving.controller import GroupController, GroupSpec
from moeplane.workers.serving.engine import EngineConfig
from moeplane.workers.serving.service import ControlServer

from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import WorkerRegistry

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
    drain_timeout_s: float = 120.0  # a shrink waits this long at most for a group's requests
    drain_poll_s: float = 0.25
    api_key: str | None = None  # the frontend requires it (issue 14); None: open


@dataclass(frozen=True)
class RunningGroup:
    group_id: str
    role: Role
    address: str


@dataclass
class _Member:
    group: RunningGroup
    server: ControlServer
    client: WorkerControlClient
    beat: Heartbeat


class EmbeddedStack:
    def __init__(self, plan: EmbeddedPlan, options: StackOptions | None = None) -> None:
        self.plan = plan
        self.options = options or StackOptions()
        self.security = GrpcSecurity()
        self.redis: LocalRedis | None = None
        self.redis_url = ""
        self.frontend: FrontendServer | None = None
        self._members: list[_Member] = []
        self._registry: WorkerRegistry | None = None
        self._owns_ray = False
        self._desired: dict[Role, int] = {r: plan.pool(r).num_groups for r in Role}
        self._scale_lock = asyncio.Lock()
        self._scaling: set[asyncio.Task[None]] = set()
        self.num_drain_timeouts = 0

    @property
    def groups(self) -> list[RunningGroup]:
        return [m.group for m in self._members]

    @property
    def url(self) -> str:
        return self.frontend.url if self.frontend is not None else ""

    @property
    def servers(self) -> dict[str, ControlServer]:
        """Each running group's control server by group id (tests stop one to fake a crash)."""
        return {m.group.group_id: m.server for m in self._members}

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

        redis_client = async_redis(self.redis_url)
        self._registry = WorkerRegistry(redis_client, plan.keys, ttl_s=opts.registry_ttl_s)
        specs = [
            self._group_spec(pool, i) for pool in (plan.prefill, plan.decode) for i in range(pool.num_groups)
        ]
        progress(f"starting {len(specs)} groups ({sum(s.ep_size for s in specs)} rank actors)")
        await self._start_groups(specs)

        progress("starting the frontend")
        config = FrontendConfig(
            served_model=plan.served_model, max_model_len=plan.max_model_len,
            request_timeout_s=opts.request_timeout_s, api_key=opts.api_key, model_root=plan.checkpoint,
        )
        tokenizer = await asyncio.to_thread(load_tokenizer, plan.tokenizer, plan.arch)  # hf://: may fetch
        self.frontend = FrontendServer(
            config, self.redis_url, plan.keys, tokenizer, self.security,
            registry_ttl_s=opts.registry_ttl_s,
        )
        await self.frontend.start(opts.host, opts.port)
        roles = [Role.DECODE] + ([Role.PREFILL] if plan.prefill.num_groups else [])
        await self.frontend.cache.wait_for(roles, timeout_s=30.0)

    async def _start_groups(self, specs: list[GroupSpec]) -> None:
        """Start the groups' servers together, then register each with a heartbeat."""
        assert self._registry is not None
        servers = [ControlServer(GroupController(s), self.security) for s in specs]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(srv.start(self.options.host) for srv in servers), return_exceptions=True),
                self.options.start_timeout_s,
            )
        except BaseException:  # cancelled or timed out: none of them is a member yet
            await asyncio.gather(*(srv.stop() for srv in servers), return_exceptions=True)
            raise
        failed = [r for r in results if isinstance(r, BaseException)]
        for spec, server, address in zip(specs, servers, results, strict=True):
            if not isinstance(address, str):
                continue
            client = WorkerControlClient(address, self.security)
            snapshot = stats_snapshot(client, address, self.plan.served_model)
            beat = Heartbeat(self._registry, snapshot, self.options.heartbeat_s)
            group = RunningGroup(spec.group_id, Role(spec.role.value), address)
            self._members.append(_Member(group, server, client, beat))
            beat.start()
        if failed:
            # The servers that did not start may hold actors: stop() reaches only members.
            await asyncio.gather(
                *(srv.stop() for srv, r in zip(servers, results, strict=True) if not isinstance(r, str)),
                return_exceptions=True,
            )
            raise failed[0]

    def pool_groups(self, role: Role) -> tuple[int, int]:
        """(desired, ready) groups of the pool: ready ones are running and registered."""
        ready = sum(
            1 for m in self._members if m.group.role is role and m.beat.num_published > 0
        )
        return self._desired[role], ready

    def check_scale(self, role: Role, groups: int) -> int:
        """`groups` if the pool may run that many here, else ScaleError naming the bounds."""
        pool = self.plan.pool(role)
        if pool.placement is None and groups > 0:
            raise ScaleError(
                f"spec.{role}: the stack started with no {role} groups (aggregated serving); "
                "it cannot add a pool it has no placement for"
            )
        return check_groups(role, groups, pool.min_groups, pool.max_groups)

    def request_scale(self, role: Role, groups: int) -> asyncio.Task[None]:
        """Check and record the new size now (`pool_groups` reports it at once) and resize in the
        background; call on the stack's event loop. ScaleError if the size is out of bounds."""
        self.check_scale(role, groups)
        self._desired[role] = groups
        task = asyncio.create_task(self._resize(role), name=f"moeplane-scale-{role}")
        self._scaling.add(task)
        task.add_done_callback(self._scaling.discard)
        return task

    async def scale_pool(self, role: Role, groups: int) -> None:
        """Run `groups` EP groups in the pool. Growing starts and registers new groups; shrinking
        stops routing to the surplus ones, waits for their requests to end, then stops them."""
        await self.request_scale(role, groups)

    async def _resize(self, role: Role) -> None:
        async with self._scale_lock:  # one resize at a time; the latest request wins
            groups = self._desired[role]
            mine = [m.group.group_id for m in self._members if m.group.role is role]
            if groups > len(mine):
                pool = self.plan.pool(role)
                specs = [self._group_spec(pool, i) for i in next_indices(mine, groups - len(mine))]
                new = [s.group_id for s in specs]
                log.info("scaling %s %d -> %d: starting %s", role, len(mine), groups, new)
                await self._start_groups(specs)
            elif groups < len(mine):
                gone = set(surplus(mine, groups))
                log.info("scaling %s %d -> %d: draining %s", role, len(mine), groups, sorted(gone))
                members = [m for m in self._members if m.group.group_id in gone]
                await asyncio.gather(*(self._drain_and_stop(m) for m in members))

    async def _drain_and_stop(self, member: _Member) -> None:
        gid = member.group.group_id
        # Out of routing first: the registry for every reader, and this frontend's cache at
        # once (it would otherwise keep a deregistered group for one TTL).
        await member.beat.stop(deregister=True)
        if self.frontend is not None:
            self.frontend.cache.suspect(gid, float("inf"))
        deadline = time.monotonic() + self.options.drain_timeout_s
        try:
            while True:
                load = await self._group_load(member)
                if load is not None and group_idle(load):
                    break
                if time.monotonic() > deadline:
                    self.num_drain_timeouts += 1
                    log.warning("group %s still busy after %.0f s (%s); stopping it", gid,
                                self.options.drain_timeout_s, load)
                    break
                await asyncio.sleep(self.options.drain_poll_s)
        finally:
            # Also when the stack stops mid-drain: the group leaves the members only here, and
            # is stopped right after, so stop() never misses it.
            self._members.remove(member)
            await member.client.close()
            try:
                await member.server.stop()
            except Exception:
                log.warning("group %s did not stop cleanly", gid, exc_info=True)

    async def _group_load(self, member: _Member) -> GroupLoad | None:
        try:
            stats = await member.client.stats(timeout_s=5.0)
        except Exception as exc:
            log.warning("draining %s: no stats: %s", member.group.group_id, exc)
            return None
        inflight = 0
        if self.frontend is not None:
            inflight = len(self.frontend.pipeline.inflight.reservations.get(member.group.group_id, ()))
        return GroupLoad(
            queue_depth=stats.queue_depth,
            num_used_blocks=stats.num_used_blocks,
            num_leased_blocks=sum(r.num_leased_blocks for r in stats.ranks),
            frontend_inflight=inflight,
        )

    def _group_spec(self, pool: PoolPlan, index: int) -> GroupSpec:
        plan = self.plan
        role = EngineRole(pool.role.value)
        engine = EngineConfig(
            role=role, num_blocks=pool.num_blocks_per_rank, block_size=pool.block_size_tokens,
            scheduler=plan.scheduler, lease_s=plan.lease_s,
        )
        rank = RankSpec(
            arch=plan.arch, weights=plan.weights, engine=engine, placement=pool.placement,
            tokenizer=plan.tokenizer,
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
        for task in list(self._scaling):
            task.cancel()
        await asyncio.gather(*self._scaling, return_exceptions=True)
        if self.frontend is not None:
            await self.frontend.stop()
            self.frontend = None
        members, self._members = self._members, []
        for m in members:
            await m.beat.stop(deregister=True)
        if self._registry is not None:
            await self._registry.client.aclose()
            self._registry = None
        for m in members:
            await m.client.close()
        results = await asyncio.gather(*(m.server.stop() for m in members), return_exceptions=True)
        for err in results:
            if isinstance(err, BaseException):
                log.warning("a serving group did not stop cleanly: %s", err)
        if self._owns_ray:
            await asyncio.to_thread(ray.shutdown)
            self._owns_ray = False
        if self.redis is not None:
            await asyncio.to_thread(self.redis.close)
            self.redis = None
