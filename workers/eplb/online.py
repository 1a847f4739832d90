"""The online loop's Redis side for one serving group: publish windows, measure, decide, adopt.

`PoolBalancer` is synchronous (redis-py; callers run it on a worker thread) and thin: the
decision is `controller.decide`, the storage `EplbStore`. Every group of a pool runs one; they
share the pool's windows and its placement key, and publishing is compare-and-set on the
version, so when two groups' balancers race, one publishes and the other adopts its placement:
every group of a pool converges on the same placement.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from moeplane.api.enums import EplbAlgorithm, EplbMode, Role
from moeplane.api.spec import EplbSpec
from moeplane.workers.eplb.controller import (
    ControllerConfig,
    Keep,
    Rebalance,
    decide,
    measured_balancedness,
)
from moeplane.workers.eplb.counter import LoadWindow
from moeplane.workers.eplb.store import EplbStore
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement

from moeplane.bus.keys import DeploymentKeys


@dataclass(frozen=True)
class GroupEplb:
    """EPLB settings of one serving group (`spec.eplb` plus where the pool's data lives).

    Attributes:
        mode: STATIC counts and reports balancedness but never moves; ONLINE also rebalances.
            (OFF groups get no GroupEplb at all.)
        redis_url / keys: the deployment's Redis and key prefix.
        window_s: the ranks' sliding window of counts (`windowSeconds`).
        interval_s: between balancer decisions (`intervalSeconds`).
        balance: threshold, algorithm and the pool's layout for `decide`.
        publish_s: between window uploads; default a quarter window, at most half an interval.
        layers_per_step: MoE layers whose experts move in one pause between forward passes.
        num_buckets: buckets of the ranks' windows.
    """

    mode: EplbMode
    redis_url: str
    keys: DeploymentKeys
    window_s: float
    interval_s: float
    balance: ControllerConfig
    publish_s: float | None = None
    layers_per_step: int = 1
    num_buckets: int = 8

    def __post_init__(self) -> None:
        if self.mode is EplbMode.OFF:
            raise EplbError("mode off runs no EPLB loop: give the group no GroupEplb")
        for name in ("window_s", "interval_s"):
            if not getattr(self, name) > 0:
                raise EplbError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.publish_s is not None and not self.publish_s > 0:
            raise EplbError(f"publish_s must be > 0 seconds, got {self.publish_s}")
        if self.layers_per_step < 1 or self.num_buckets < 1:
            raise EplbError(
                f"layers_per_step ({self.layers_per_step}) and num_buckets ({self.num_buckets}) must be >= 1"
            )

    @property
    def publish_period_s(self) -> float:
        if self.publish_s is not None:
            return self.publish_s
        return min(self.window_s / 4, self.interval_s / 2)

    @classmethod
    def from_spec(
        cls,
        spec: EplbSpec,
        redis_url: str,
        keys: DeploymentKeys,
        num_expert_groups: int,
        num_gpus: int,
        num_nodes: int = 1,
        publish_s: float | None = None,
        layers_per_step: int = 1,
    ) -> GroupEplb | None:
        """None for mode off; else the settings of `spec.eplb` for a pool of `num_gpus` ranks."""
        if EplbMode(spec.mode) is EplbMode.OFF:
            return None
        balance = ControllerConfig(
            threshold=spec.balancedness_threshold,
            num_groups=num_expert_groups,
            num_nodes=num_nodes,
            num_gpus=num_gpus,
            algorithm=EplbAlgorithm(spec.algorithm),
        )
        return cls(
            mode=EplbMode(spec.mode), redis_url=redis_url, keys=keys, window_s=spec.window_seconds,
            interval_s=spec.interval_seconds, balance=balance, publish_s=publish_s,
            layers_per_step=layers_per_step,
        )


@dataclass(frozen=True)
class BalancerRun:
    """One balancer run.

    Attributes:
        target: a placement newer than the group's to move to (published here or by another
            group), or None.
        decision: what `decide` said (None: static mode, or the pool already had a newer one).
        measured: balancedness the ranks measured under the group's placement (None: too little
            data).
    """

    target: Placement | None
    decision: Keep | Rebalance | None
    measured: float | None


class PoolBalancer:
    """One group's handle on its pool's EPLB data in Redis."""

    def __init__(self, config: GroupEplb, role: Role, client: redis.Redis | None = None) -> None:
        self.config = config
        self.client = client if client is not None else redis.Redis.from_url(config.redis_url)
        self.store = EplbStore(self.client, config.keys, role, window_ttl_s=max(60.0, 4 * config.window_s))

    def close(self) -> None:
        self.client.close()

    def initial(self, placement: Placement) -> Placement:
        """The placement to start with. Online: the pool's published one when it is as new and
        fits (a group joining a pool that already rebalanced). Otherwise `placement`, published
        if the pool has none yet (static mode always runs its load file's placement)."""
        stored = self._stored_fitting(placement) if self.config.mode is EplbMode.ONLINE else None
        if stored is not None and stored.version >= placement.version:
            return stored
        self.store.publish_placement(placement)
        return placement

    def publish_windows(self, group_id: str, windows: Sequence[LoadWindow]) -> None:
        for window in windows:
            self.store.publish_window(group_id, window)

    def tick(self, current: Placement, now_s: float | None = None) -> BalancerRun:
        """Measure the pool under `current`, report it, and in online mode decide and publish.

        `current` is the placement the group runs; windows older than three upload periods
        (ranks that stopped) are left out.
        """
        now = time.time() if now_s is None else now_s
        load = self.store.read_load(max_age_s=3 * self.config.publish_period_s + 1.0, now_s=now)
        measured = None
        shape = (current.num_layers, current.num_logical)
        if load is not None and tuple(load.logical_counts.shape) == shape and int(load.logical_counts.sum()):
            measured = measured_balancedness(load, current, self.config.balance.num_gpus)
            self.store.publish_status(measured, current.version, now_s=now)
        if self.config.mode is not EplbMode.ONLINE:
            return BalancerRun(None, None, measured)
        newer = self._stored_fitting(current)
        if newer is not None and newer.version > current.version:
            return BalancerRun(newer, None, measured)
        decision = decide(load, current, self.config.balance)
        if not isinstance(decision, Rebalance):
            return BalancerRun(None, decision, measured)
        if self.store.publish_placement(decision.placement, now_s=now):
            return BalancerRun(decision.placement, decision, measured)
        # Another group of the pool published first: follow it.
        newer = self._stored_fitting(current)
        target = newer if newer is not None and newer.version > current.version else None
        return BalancerRun(target, decision, measured)

    def _stored_fitting(self, like: Placement) -> Placement | None:
        stored = self.store.read_placement()
        if stored is None or stored.phy2log.shape != like.phy2log.shape:
            return None  # none yet, or from an EP layout this group does not have
        return stored if stored.num_logical == like.num_logical else None
