"""Which EP groups a pool's head should run (pure: numbers in, decisions out).

The operator sizes a pool by the replicas of its RayCluster's worker group; the head sees that as
the accelerators its Ray cluster has. Each EP group needs `ep_size` of them, so the groups that fit
are indices 0..n-1: the head starts the missing ones, stops those past n (a scale-down) and
restarts any that failed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from moeplane.workers.eplb.online import GroupEplb
from moeplane.workers.pool.settings import PoolSettings
from moeplane.workers.runtime import scheduler_config
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.controller import GroupSpec
from moeplane.workers.serving.engine import EngineConfig


class PoolPlanError(ValueError):
    pass


@dataclass(frozen=True)
class PoolOptions:
    """How the head runs its groups (flags of `moeplane pool`)."""

    host: str = "127.0.0.1"  # control services listen here (0.0.0.0 in a pod)
    rank_host: str = "127.0.0.1"  # the ranks' KV services and collectives bind here
    groups: int | None = None  # None: as many as the Ray cluster's accelerators hold
    cpus_per_rank: float = 1.0  # CPU pools: Ray CPUs per rank actor
    max_kv_blocks_per_rank: int | None = None  # a cap below the layout's (tests' smaller caches)
    heartbeat_s: float = 1.0
    registry_ttl_s: float = 5.0
    reconcile_s: float = 5.0
    start_timeout_s: float = 600.0
    drain_timeout_s: float = 120.0  # a draining group still busy after this is stopped anyway
    ready_file: str | None = None  # present while every group the pool should run is up

    def __post_init__(self) -> None:
        if self.groups is not None and self.groups < 0:
            raise PoolPlanError(f"groups must be >= 0, got {self.groups}")
        if self.cpus_per_rank <= 0:
            raise PoolPlanError(f"cpus_per_rank must be > 0, got {self.cpus_per_rank}")
        if not 0 < self.heartbeat_s < self.registry_ttl_s:
            raise PoolPlanError(
                f"heartbeat_s ({self.heartbeat_s}) must be in (0, registry_ttl_s={self.registry_ttl_s})"
            )
        if self.reconcile_s <= 0:
            raise PoolPlanError(f"reconcile_s must be > 0, got {self.reconcile_s}")


def groups_that_fit(
    resources: Iterable[Mapping[str, float]], settings: PoolSettings, opts: PoolOptions
) -> int:
    """EP groups the alive nodes' total resources hold (`GPU` per rank, or `cpus_per_rank` CPUs)."""
    key, per_rank = ("GPU", 1.0) if settings.device == "cuda" else ("CPU", opts.cpus_per_rank)
    total = sum(float(r.get(key, 0.0)) for r in resources)
    return math.floor(total / (per_rank * settings.ep_size) + 1e-9)


@dataclass(frozen=True)
class Reconcile:
    start: tuple[int, ...]
    stop: tuple[int, ...]


def reconcile(desired: int, running: Iterable[int], failed: Iterable[int]) -> Reconcile:
    """Groups 0..desired-1 should run: stop the failed and the surplus, start what is missing."""
    return reconcile_indices(range(desired), running, failed)


def reconcile_indices(want: Iterable[int], running: Iterable[int], failed: Iterable[int]) -> Reconcile:
    """Groups `want` should run (their KubeRay replicas are up): stop the failed and those whose
    replica is gone, start what is missing."""
    want_set, running_set, failed_set = set(want), set(running), set(failed)
    stop = failed_set | (running_set - want_set)
    healthy = running_set - stop
    start = sorted(want_set - healthy)
    return Reconcile(tuple(start), tuple(sorted(stop)))


def group_spec(settings: PoolSettings, opts: PoolOptions, index: int) -> GroupSpec:
    """Group `index` of the pool, as its runtime document says (scheduler limits, KV blocks,
    block size, placement, EPLB)."""
    doc = settings.document
    engine = EngineConfig(
        role=settings.role,
        num_blocks=settings.kv_blocks_per_rank(opts.max_kv_blocks_per_rank),
        block_size=doc.serving.block_size_tokens,
        scheduler=scheduler_config(doc.serving),
        lease_s=settings.lease_s,
    )
    # A checkpoint location is resolved and opened by each rank on its own node.
    rank = RankSpec(
        arch=settings.arch,
        weights=settings.weights,
        tokenizer=doc.model.tokenizer,
        engine=engine,
        placement=settings.placement,
        device=settings.device,
        dtype=settings.dtype,
        kv_backend=settings.kv_backend,
        kv_chunk_bytes=settings.kv_chunk_bytes,
        bind_host=opts.rank_host,
        security=settings.security,
    )
    # The pool's EPLB (off / static / online) as the manifest's spec.eplb asks.
    eplb = GroupEplb.from_spec(
        settings.eplb, settings.redis_url, settings.keys, settings.arch.n_group, settings.ep_size,
        num_nodes=settings.group.nodes_per_group,
    )
    return GroupSpec(
        settings.group_id(index), settings.role, settings.ep_size, rank, opts.cpus_per_rank,
        start_timeout_s=opts.start_timeout_s, eplb=eplb,
    )
