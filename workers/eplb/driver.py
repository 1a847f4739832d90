"""`EplbDriver`: the online loop of one serving group, run beside its step loop (asyncio).

The group controller owns the step loop; the driver only says what the next step must carry and
hears what the ranks reported:
- every `publish_period_s` it asks for the ranks' load windows (`collect_load` on the next step,
  so windows are read between forward passes on the ranks' own threads) and uploads them;
- every `interval_s` (online mode) it runs `PoolBalancer.tick` on a worker thread and, for a new
  placement, hands it to the next step: every rank gets the same target on the same step and
  then moves one batch of layers per step (see `EPModelRunner.advance_placement`);
- it tracks the version in force and the last measured balancedness (`status`).
A step is wanted while windows are asked for or a move is under way, so an idle group still
finishes a switch it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from moeplane.api.enums import EplbMode, Role
from moeplane.workers.eplb.controller import Rebalance
from moeplane.workers.eplb.counter import LoadWindow
from moeplane.workers.eplb.online import GroupEplb, PoolBalancer
from moeplane.workers.placement import Placement

log = logging.getLogger(__name__)

# How long an upload waits for the step that collects the windows (a busy step on a loaded CPU).
_COLLECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class GroupEplbStatus:
    """What one group's EPLB loop knows.

    Attributes:
        placement_version: the placement every layer runs on.
        moving_to: the version a switch in progress moves to (None: no switch).
        measured: the pool's balancedness at the last tick (None before any data).
        measured_version: the placement `measured` was taken under.
        rebalances: placements this group published or adopted since it started.
        last_rebalance: the last decision this group published (None: none yet).
    """

    placement_version: int
    moving_to: int | None
    measured: float | None
    measured_version: int | None
    rebalances: int
    last_rebalance: Rebalance | None


class EplbDriver:
    def __init__(
        self, config: GroupEplb, role: Role, group_id: str, wake: Callable[[], None]
    ) -> None:
        self.config = config
        self.role = role
        self.group_id = group_id
        self._wake = wake
        self._balancer: PoolBalancer | None = None
        self._placement: Placement | None = None
        self._pending: Placement | None = None  # to send with the next step
        self._moving_to: Placement | None = None  # sent, not yet in force everywhere
        self._collect = False
        self._windows: list[LoadWindow] | None = None
        self._collected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._measured: tuple[float, int] | None = None
        self._rebalances = 0
        self._last_rebalance: Rebalance | None = None

    # ---- lifecycle ------------------------------------------------------------------------------
    async def initial_placement(self, placement: Placement) -> Placement:
        """Connect to Redis and settle the placement the ranks start with (see PoolBalancer.initial)."""
        self._balancer = await asyncio.to_thread(PoolBalancer, self.config, self.role)
        self._placement = await asyncio.to_thread(self._balancer.initial, placement)
        return self._placement

    def start(self) -> None:
        if self._balancer is None or self._placement is None:
            raise RuntimeError("EplbDriver.start before initial_placement")
        self._task = asyncio.create_task(self._loop(), name=f"eplb-{self.group_id}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._balancer is not None:
            await asyncio.to_thread(self._balancer.close)
            self._balancer = None

    # ---- hooks of the group's step loop ------------------------------------------------------
    @property
    def wants_step(self) -> bool:
        return self._collect or self._pending is not None or self._moving_to is not None

    def next_step(self) -> tuple[Placement | None, bool]:
        """(placement to start moving to, collect load windows) for the step about to run."""
        target = None
        if self._pending is not None and self._moving_to is None:
            target, self._pending = self._pending, None
            self._moving_to = target
        collect, self._collect = self._collect, False
        return target, collect

    def on_step(
        self, versions: Sequence[int], moving: Sequence[bool], windows: Sequence[LoadWindow | None]
    ) -> None:
        """The ranks' reports of one step, in rank order."""
        target = self._moving_to
        if target is not None and not any(moving) and all(v == target.version for v in versions):
            self._placement, self._moving_to = target, None
            log.info("group %s now runs expert placement v%d", self.group_id, target.version)
        got = [w for w in windows if w is not None]
        if got:
            self._windows = got
            self._collected.set()

    @property
    def placement(self) -> Placement | None:
        return self._placement

    def status(self) -> GroupEplbStatus:
        version = -1 if self._placement is None else self._placement.version
        moving = None if self._moving_to is None else self._moving_to.version
        measured, measured_version = self._measured if self._measured is not None else (None, None)
        return GroupEplbStatus(
            version, moving, measured, measured_version, self._rebalances, self._last_rebalance
        )

    # ---- the loop -------------------------------------------------------------------------------
    async def _loop(self) -> None:
        period = self.config.publish_period_s
        next_tick = time.monotonic() + min(self.config.interval_s, self.config.window_s)
        while True:
            await asyncio.sleep(period)
            try:
                await self._upload()
                if time.monotonic() >= next_tick and self._moving_to is None and self._pending is None:
                    next_tick = time.monotonic() + self.config.interval_s
                    await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away or a bad window: serving goes on, the next round retries
                log.exception("EPLB round of group %s failed", self.group_id)

    async def _upload(self) -> None:
        assert self._balancer is not None
        self._collected.clear()
        self._collect = True
        self._wake()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._collected.wait(), _COLLECT_TIMEOUT_S)
        windows, self._windows = self._windows, None
        if windows:
            await asyncio.to_thread(self._balancer.publish_windows, self.group_id, windows)

    async def _tick(self) -> None:
        assert self._balancer is not None and self._placement is not None
        current = self._placement
        result = await asyncio.to_thread(self._balancer.tick, current)
        if result.measured is not None:
            self._measured = (result.measured, current.version)
        if isinstance(result.decision, Rebalance) and result.target is result.decision.placement:
            self._last_rebalance = result.decision
            log.info(
                "group %s rebalanced %s experts: balancedness %.3f measured, %.3f -> %.3f expected, "
                "%d weights cross ranks; publishing v%d", self.group_id, self.role,
                result.decision.measured, result.decision.expected_before, result.decision.expected_after,
                result.decision.moved_slots, result.target.version,
            )
        if result.target is not None and self.config.mode is EplbMode.ONLINE:
            self._rebalances += 1
            self._pending = result.target
            self._wake()
