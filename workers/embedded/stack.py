"""`EmbeddedStack`: the whole product on 127.0.0.1, no cluster (`moeplane up`, `moeplane demo`).

Start order: a private redis-server, a local Ray whose every process listens on 127.0.0.1
(`ray_local`), one `GroupSupervisor` per pool (prefill, decode) that starts its groups (each a
`GroupController` with its gRPC control service in this process and one Ray actor per EP rank, a
CPU share each), registers them, probes them and keeps them alive, then the frontend, which is
ready once the router sees a live group of each role. `stop()` undoes it in reverse: nothing it
started survives it, Ray's processes and redis-server included.

The supervisors are the same class `moeplane pool` runs in Kubernetes (see
`moeplane.workers.supervisor`): a rank that dies or hangs gets its group marked restarting at once
and restarted as a unit; `/health` reports it. Each group runs on its pool's planned placement
(`redundantExperts` extra slots, or the static load file's placement) and, unless
`spec.eplb.mode` is off, counts its expert load into Redis; in online mode its controller also
rebalances (see `moeplane.workers.eplb.driver`).

`scale_pool` resizes a pool while it serves (the planner's embedded back end calls it): new groups
start from the same group spec and register once live; surplus groups drain (they refuse new
requests and finish theirs, bounded by `drain_timeout_s`) and are then stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from moeplane.api.enums import Role
from moeplane.workers.embedded.local_redis import LocalRedis
from moeplane.workers.embedded.plan import EmbeddedPlan, PoolPlan
from moeplane.workers.embedded.ray_local import init_local_ray
from moeplane.workers.embedded.scaling import ScaleError, check_groups
from moeplane.workers.eplb.online import GroupEplb
from moeplane.workers.frontend.app import FrontendConfig
from moeplane.workers.frontend.server import FrontendServer
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.model.tokenizer import load_tokenizer
from moeplane.workers.runtime import serving_limits
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.config import Role as EngineRole
from moeplane.workers.serving.controller import GroupSpec
from moeplane.workers.serving.engine import EngineConfig
from moeplane.workers.serving.limits import ServingLimits
from moeplane.workers.supervisor.group import PoolIdentity, SupervisedGroup
from moeplane.workers.supervisor.placement import LocalCpuShares
from moeplane.workers.supervisor.policy import RestartPolicy
from moeplane.workers.supervisor.supervisor import GroupSupervisor, SupervisorOptions

from moeplane.bus.redis_client import async_redis
from moeplane.bus.registry import GroupState, WorkerRegistry

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
    drain_poll_s: float = 0.2
    api_key: str | None = None  # the frontend requires it (issue 14); None: open
    liveness_timeout_s: float = 1.4  # a rank silent this long is declared hung
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    # Rank actors each pool keeps spawned ahead, so a restart need not wait for new processes to
    # import torch (~300 MB each); None: one group's worth (the pool's EP size).
    spare_ranks: int | None = None
    # The frontend's queue and limits; None: the runtime document's spec.serving (maxQueuedRequests,
    # queueTimeoutSeconds), with `request_timeout_s` as the request timeout.
    serving: ServingLimits | None = None


@dataclass(frozen=True)
class _Launcher:
    """The embedded `GroupLauncher`: the plan's group specs, ranks as local CPU shares."""

    stack: EmbeddedStack
    pool: PoolPlan
    placement: LocalCpuShares = field(default_factory=LocalCpuShares)

    def group_spec(self, index: int) -> GroupSpec:
        return self.stack.group_spec(self.pool, index)


class EmbeddedStack:
    def __init__(self, plan: EmbeddedPlan, options: StackOptions | None = None) -> None:
        self.plan = plan
        self.options = options or StackOptions()
        self.security = GrpcSecurity()
        self.redis: LocalRedis | None = None
        self.redis_url = ""
        self.frontend: FrontendServer | None = None
        self.supervisors: dict[Role, GroupSupervisor] = {}
        self._registry: WorkerRegistry | None = None
        self._owns_ray = False
        self._desired: dict[Role, int] = {r: plan.pool(r).num_groups for r in Role}
        self._scaling: set[asyncio.Task[None]] = set()

    @property
    def groups(self) -> list[SupervisedGroup]:
        """Every group the supervisors hold (any state), prefill first, by index."""
        return [
            g for role in (Role.PREFILL, Role.DECODE) if role in self.supervisors
            for _, g in sorted(self.supervisors[role].groups.items())
        ]

    def group(self, group_id: str) -> SupervisedGroup:
        for g in self.groups:
            if g.group_id == group_id:
                return g
        raise KeyError(f"no group {group_id!r}")

    @property
    def url(self) -> str:
        return self.frontend.url if self.frontend is not None else ""

    @property
    def num_drain_timeouts(self) -> int:
        return sum(s.num_drain_timeouts for s in self.supervisors.values())

    @property
    def limits(self) -> ServingLimits:
        opts = self.options
        return opts.serving or serving_limits(self.plan.serving, opts.request_timeout_s)

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
            progress("starting local Ray (127.0.0.1 only)")
            # On this thread: Ray installs its signal handlers only from the main thread.
            init_local_ray(opts.ray_num_cpus)
            self._owns_ray = True

        self._registry = WorkerRegistry(async_redis(self.redis_url), plan.keys, ttl_s=opts.registry_ttl_s)
        supervisor_options = SupervisorOptions(
            host=opts.host, heartbeat_s=opts.heartbeat_s, liveness_timeout_s=opts.liveness_timeout_s,
            probe_timeout_s=opts.start_timeout_s, drain_timeout_s=opts.drain_timeout_s,
            drain_poll_s=opts.drain_poll_s, restart=opts.restart,
        )
        for role in Role:
            pool = plan.pool(role)
            identity = PoolIdentity(role, str(role), plan.served_model)
            spares = pool.ep_size if opts.spare_ranks is None else opts.spare_ranks
            self.supervisors[role] = GroupSupervisor(
                identity, _Launcher(self, pool), self._registry, self.security,
                dataclasses.replace(supervisor_options, spare_ranks=spares),
                progress=lambda m: log.info("%s", m),
            )
        ranks = sum(p.num_ranks for p in (plan.prefill, plan.decode))
        progress(f"starting {plan.prefill.num_groups + plan.decode.num_groups} groups ({ranks} rank actors)")
        await asyncio.wait_for(
            asyncio.gather(*(
                self.supervisors[r].scale(plan.pool(r).num_groups, strict=True) for r in Role
            )),
            opts.start_timeout_s,
        )

        progress("starting the frontend")
        config = FrontendConfig(
            served_model=plan.served_model, max_model_len=plan.max_model_len,
            request_timeout_s=opts.request_timeout_s, api_key=opts.api_key, model_root=plan.checkpoint,
        )
        tokenizer = await asyncio.to_thread(load_tokenizer, plan.tokenizer, plan.arch)  # hf://: may fetch
        self.frontend = FrontendServer(
            config, self.redis_url, plan.keys, tokenizer, self.security,
            registry_ttl_s=opts.registry_ttl_s, limits=self.limits,
        )
        await self.frontend.start(opts.host, opts.port)
        roles = [Role.DECODE] + ([Role.PREFILL] if plan.prefill.num_groups else [])
        await self.frontend.cache.wait_for(roles, timeout_s=30.0)

    def pool_groups(self, role: Role) -> tuple[int, int]:
        """(desired, ready) groups of the pool: ready ones are live (registered, probed)."""
        sup = self.supervisors.get(role)
        ready = 0 if sup is None else sup.counts()[GroupState.LIVE]
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
        task = asyncio.create_task(self.supervisors[role].scale(groups), name=f"moeplane-scale-{role}")
        self._scaling.add(task)
        task.add_done_callback(self._scaling.discard)
        return task

    async def scale_pool(self, role: Role, groups: int) -> None:
        """Run `groups` EP groups in the pool. Growing starts new groups until they are live;
        shrinking drains the surplus ones (no new requests; theirs finish), then stops them."""
        await self.request_scale(role, groups)

    def group_spec(self, pool: PoolPlan, index: int) -> GroupSpec:
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
            f"{pool.role}-{index}", role, pool.ep_size, rank, self.options.cpus_per_rank,
            start_timeout_s=self.options.start_timeout_s, eplb=eplb,
        )

    async def stop(self) -> None:
        """Tear down in reverse order; safe to call after a failed or partial start."""
        for task in list(self._scaling):
            task.cancel()
        await asyncio.gather(*self._scaling, return_exceptions=True)
        if self.frontend is not None:
            await self.frontend.stop()
            self.frontend = None
        supervisors, self.supervisors = list(self.supervisors.values()), {}
        results = await asyncio.gather(*(s.stop() for s in supervisors), return_exceptions=True)
        for err in results:
            if isinstance(err, BaseException):
                log.warning("a pool did not stop cleanly: %s", err)
        if self._registry is not None:
            await self._registry.client.aclose()
            self._registry = None
        if self._owns_ray:
            await asyncio.to_thread(ray.shutdown)
            self._owns_ray = False
        if self.redis is not None:
            await asyncio.to_thread(self.redis.close)
            self.redis = None
