"""`GroupSupervisor`: starts, registers, health-checks, drains, stops and restarts the EP groups of
one pool. `moeplane up` runs one per role (`EmbeddedStack`), `moeplane pool` one in each pool's Ray
head (`PoolRunner`); the two differ only in their `GroupLauncher` (which specs, where ranks go).

Life of a group, as the registry sees it (every change is published at once, under a new
incarnation, so no heartbeat in flight can undo it):
  starting  -> its control service listens (one address for the group's whole life), its ranks
               start and load their weights, then it must pass a health probe (Health answers
               serving, and one token is computed with every rank in the forward);
  live      -> routed to; its heartbeat carries its own Stats numbers;
  restarting-> a rank died (Ray fails its step or the liveness probe sees it), hung (no liveness
               answer within `liveness_timeout_s`) or a collective failed: the group refuses new
               requests, ends every request it holds with GROUP_FAILED (frontends resume them on
               another group), and is restarted as a unit after the policy's backoff (a dead rank
               breaks the EP collective and NCCL cannot repair a communicator, so every rank is
               replaced and the process group formed anew; the surviving ranks' weights are
               reloaded too);
  failed    -> past the policy's restarts in a row; the reason stays in the record; retried after
               `failed_retry_s`;
  draining  -> scale-down: the group itself refuses new requests (UNAVAILABLE) while the ones it
               holds finish (or, at `drain_timeout_s`, fail over to other groups); then it is
               deregistered (fenced) and stopped. Nothing depends on a frontend's state.
Each event is one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import redis.exceptions
from moeplane.workers.grpc_security import GrpcSecurity, advertised_host
from moeplane.workers.registry.heartbeat import Heartbeat
from moeplane.workers.serving.client import WorkerControlClient
from moeplane.workers.serving.controller import GroupController, GroupSpec
from moeplane.workers.serving.ranks import SpareRanks, one_line
from moeplane.workers.serving.service import ControlServer
from moeplane.workers.supervisor.group import PoolIdentity, SupervisedGroup
from moeplane.workers.supervisor.liveness import LivenessProbe
from moeplane.workers.supervisor.placement import RankPlacement
from moeplane.workers.supervisor.policy import RestartPolicy, Verdict, resize_plan

from moeplane.bus.registry import GroupState, WorkerGroup, WorkerRegistry

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class GroupLauncher(Protocol):
    """What a mode supplies: each group's spec, and where its rank actors go."""

    @property
    def placement(self) -> RankPlacement: ...

    def group_spec(self, index: int) -> GroupSpec: ...


class GroupStartError(RuntimeError):
    """A group did not come up (its ranks did not start, or it failed its health probe)."""


@dataclass(frozen=True)
class SupervisorOptions:
    host: str = "127.0.0.1"  # control services listen here (0.0.0.0 in a pod)
    advertise_host: str | None = None  # what routers dial; None: `host`, or this host's IP for a wildcard
    heartbeat_s: float = 1.0
    liveness_interval_s: float = 0.2
    liveness_timeout_s: float = 1.4  # a rank silent this long hangs (detection <= timeout + 2 intervals)
    probe_timeout_s: float = 120.0  # the health probe after the weights load (a first forward)
    drain_timeout_s: float = 120.0
    drain_poll_s: float = 0.2
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    # Rank actors kept spawned ahead for restarts (CPU pools only: a GPU spare would hold a GPU).
    spare_ranks: int = 0


class GroupSupervisor:
    def __init__(
        self,
        pool: PoolIdentity,
        launcher: GroupLauncher,
        registry: WorkerRegistry,
        security: GrpcSecurity | None = None,
        options: SupervisorOptions | None = None,
        progress: Progress = lambda _: None,
    ) -> None:
        self.pool = pool
        self.launcher = launcher
        self.registry = registry
        self.security = security or GrpcSecurity()
        self.options = options or SupervisorOptions()
        self.progress = progress
        self.groups: dict[int, SupervisedGroup] = {}
        self.num_drain_timeouts = 0
        self.desired = 0
        self._probe = LivenessProbe(
            self.options.liveness_interval_s, self.options.liveness_timeout_s, name=f"liveness-{pool.pool}"
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._recovering: dict[int, asyncio.Task[None]] = {}
        self._resize_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._closed = False
        self._spares: SpareRanks | None = None

    # ---- queries ----------------------------------------------------------------------------------
    def counts(self) -> dict[GroupState, int]:
        out = dict.fromkeys(GroupState, 0)
        for g in self.groups.values():
            out[g.state] += 1
        return out

    def group(self, group_id: str) -> SupervisedGroup:
        for g in self.groups.values():
            if g.group_id == group_id:
                return g
        raise KeyError(f"no group {group_id!r} in pool {self.pool.pool}")

    async def wait_for(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Until `check()` holds (re-checked on every change of a group's state)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(check), timeout_s)
            except TimeoutError:
                raise TimeoutError(f"pool {self.pool.pool}: {what} not within {timeout_s:g} s") from None

    # ---- resizing ---------------------------------------------------------------------------------
    async def scale(self, groups: int, strict: bool = False) -> None:
        """Run `groups` groups: start the missing ones (until live) and drain then stop the surplus.

        `strict`: a group that does not come up on its first start raises GroupStartError (and is
        stopped); otherwise it stays under the restart policy like any failed group."""
        self.desired = groups
        async with self._resize_lock:
            plan = resize_plan(frozenset(self.groups), self.desired)
            if plan.drain:
                ids = [self.groups[i].group_id for i in plan.drain]
                log.info("pool %s: %d -> %d groups, draining %s", self.pool.pool, len(self.groups), groups,
                         ids)
                await asyncio.gather(*(self.drain_and_stop(i) for i in plan.drain))
            if plan.start:
                results = await asyncio.gather(
                    *(self._start_group(i, strict) for i in plan.start), return_exceptions=True
                )
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise errors[0]
            self._fill_spares()

    async def resize_to(self, want: Iterable[int], strict: bool = False) -> None:
        """Run exactly the groups `want` (`moeplane pool` on KubeRay: the indices of the replica
        groups whose nodes are up): start the missing ones (until live), drain then stop the others
        (their replica is gone, or going)."""
        wanted = frozenset(want)
        self.desired = len(wanted)
        async with self._resize_lock:
            drop = sorted(set(self.groups) - wanted, reverse=True)
            if drop:
                log.info("pool %s: stopping %s (their replica groups are gone)", self.pool.pool,
                         [self.groups[i].group_id for i in drop])
                await asyncio.gather(*(self.drain_and_stop(i) for i in drop))
            start = sorted(wanted - set(self.groups))
            if start:
                results = await asyncio.gather(
                    *(self._start_group(i, strict) for i in start), return_exceptions=True
                )
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise errors[0]
            self._fill_spares()

    async def set_spare_ranks(self, n: int) -> None:
        """Keep `n` spare rank actors from now on (0: none; restarts then spawn fresh processes)."""
        self.options = dataclasses.replace(self.options, spare_ranks=n)
        if self._spares is not None:
            await self._spares.close()
            self._spares = None
        self._fill_spares()

    @property
    def num_spares_ready(self) -> int:
        return 0 if self._spares is None else self._spares.num_ready

    def _fill_spares(self) -> None:
        """Keep `spare_ranks` rank actors spawned ahead, once the pool has groups to restart."""
        if self.options.spare_ranks <= 0 or not self.groups or self._closed:
            return
        if self._spares is None:
            g = next(iter(self.groups.values()))
            options = self.launcher.placement.actor_options(g.spec, 0)
            self._spares = SpareRanks(self.options.spare_ranks, options)
        self._spares.fill()

    async def _start_group(self, index: int, strict: bool) -> None:
        spec = self.launcher.group_spec(index)
        controller = GroupController(spec, self.launcher.placement)
        server = ControlServer(controller, self.security)
        g = SupervisedGroup(index, spec, self.pool, controller, server)
        controller.on_failure = lambda reason: self._on_failure(g, reason)
        opts = self.options
        bound = await server.listen(opts.host, 0)
        g.address = f"{advertised_host(opts.host, opts.advertise_host)}:{server.port}"
        # The supervisor's own calls go over loopback, whatever the advertised address.
        local = f"127.0.0.1:{server.port}" if bound.split(":")[0] in ("0.0.0.0", "::", "") else bound
        g.client = WorkerControlClient(local, self.security)
        g.beat = Heartbeat(self.registry, g.snapshot, opts.heartbeat_s)
        self.groups[index] = g
        await self._enter(g, GroupState.STARTING, "starting: ranks loading their weights")
        g.beat.start()
        self.progress(f"starting group {g.group_id} ({spec.ep_size} ranks) at {g.address}")
        policy, attempts = self.options.restart, 0
        while True:
            try:
                if await self._bring_up(g):
                    break
                raise GroupStartError(g.controller.status_message)  # failed right after its probe
            except Exception as exc:
                reason = f"did not start: {one_line(exc)}"
                if not strict:
                    self._recover_soon(g, reason)
                    return
                attempts += 1  # a start can fail for a passing reason (a port taken meanwhile)
                if attempts > policy.max_restarts:
                    await self._stop(g)
                    raise GroupStartError(f"group {g.group_id} {reason}") from exc
                log.warning("group %s %s; trying again (attempt %d of %d)", g.group_id, reason, attempts,
                            policy.max_restarts)
                await g.controller.close()
                await asyncio.sleep(policy.backoff_s(attempts))
        self.progress(f"group {g.group_id} is live at {g.address}")

    async def _bring_up(self, g: SupervisedGroup, restart: bool = False) -> bool:
        """Start the group's ranks (a restart takes spare actors when there are) and probe them;
        then watch them and mark the group live (False: it failed meanwhile, and the failure path
        owns it)."""
        spares = self._spares.take(g.spec.ep_size) if restart and self._spares is not None else None
        await g.controller.start(spares)
        await g.probe(self.options.probe_timeout_s)
        if not g.controller.healthy:
            return False
        self._probe.watch(g.group_id, g.controller.actors, lambda reason: g.controller.fail(reason))
        g.restarts += int(restart)
        await self._enter(g, GroupState.LIVE, "serving")
        return True

    # ---- failures ---------------------------------------------------------------------------------
    def _on_failure(self, g: SupervisedGroup, reason: str) -> None:
        """A group's controller failed (called on the event loop, once per run of its ranks)."""
        self._probe.unwatch(g.group_id)
        if g.state is GroupState.STARTING:
            return  # its first start is under way: the starter sees the failure and retries
        if self._closed or g.state is GroupState.DRAINING or self.groups.get(g.index) is not g:
            log.info("group %s lost while %s: %s", g.group_id, g.state, reason)
            return  # a draining group is not restarted: its requests fail over, then it stops
        self._recover_soon(g, reason)

    def _recover_soon(self, g: SupervisedGroup, reason: str) -> None:
        if g.index in self._recovering:
            return
        task = asyncio.create_task(self._recover(g, reason), name=f"recover-{g.group_id}")
        self._recovering[g.index] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._recovering.pop(g.index, None))

    async def _recover(self, g: SupervisedGroup, reason: str) -> None:
        """Restart `g` as a unit until it is live again, backing off; mark it failed past the policy."""
        policy = self.options.restart
        while not self._closed and self.groups.get(g.index) is g:
            failed_at = time.monotonic()
            if g.streak.on_failure(policy, failed_at) is Verdict.GIVE_UP:
                await self._enter(g, GroupState.FAILED, f"{reason} ({g.streak.failures} failures in a row)")
                log.error("group %s failed: %s after %d restarts in a row; retrying in %g s",
                          g.group_id, reason, g.streak.failures - 1, policy.failed_retry_s)
                await g.controller.close()
                await asyncio.sleep(policy.failed_retry_s)
                g.streak.reset()
                wait_s = 0.0
            else:
                wait_s = policy.backoff_s(g.streak.failures)
                await self._enter(g, GroupState.RESTARTING, reason)
                log.warning("group %s lost: %s; restarting it (attempt %d of %d) in %.1f s",
                            g.group_id, reason, g.streak.failures, policy.max_restarts, wait_s)
                await g.controller.close()
                await asyncio.sleep(wait_s)
            if self._closed or self.groups.get(g.index) is not g:
                return
            try:
                live = await self._bring_up(g, restart=True)
            except Exception as exc:
                reason = f"restart failed: {one_line(exc)}"
                continue
            if not live:  # it failed again right after its probe
                reason = g.controller.status_message
                continue
            log.warning("group %s restarted (restart %d), %.1f s after the failure",
                        g.group_id, g.restarts, time.monotonic() - failed_at)
            return

    # ---- draining and stopping --------------------------------------------------------------------
    async def drain_and_stop(self, index: int) -> None:
        """Take group `index` out of service without stranding a request, then stop it."""
        g = self.groups[index]
        recovering = self._recovering.get(index)
        if recovering is not None:
            recovering.cancel()
            await asyncio.gather(recovering, return_exceptions=True)
        if g.controller.healthy:
            g.controller.drain()  # refuse new requests first, then say so
            await self._enter(g, GroupState.DRAINING, "draining: scale-down")
            deadline = time.monotonic() + self.options.drain_timeout_s
            while g.controller.healthy and not await self._idle(g):
                if time.monotonic() > deadline:
                    self.num_drain_timeouts += 1
                    log.warning("group %s still busy after %.0f s of draining; stopping it (its requests "
                                "fail over)", g.group_id, self.options.drain_timeout_s)
                    break
                await asyncio.sleep(self.options.drain_poll_s)
        await self._stop(g)
        log.info("group %s drained and stopped", g.group_id)

    async def _idle(self, g: SupervisedGroup) -> bool:
        """No request on the group: none queued or running, no KV in use or under a lease."""
        if g.controller.num_requests:
            return False
        try:
            stats = await g.controller.stats()
        except Exception:
            return False
        return stats.num_used_blocks == 0 and all(r.num_leased_blocks == 0 for r in stats.ranks)

    async def _stop(self, g: SupervisedGroup) -> None:
        """Deregister (fenced past its last incarnation), then stop its service and ranks."""
        self._probe.unwatch(g.group_id)
        if self.groups.get(g.index) is g:
            del self.groups[g.index]
        if g.beat is not None:
            await g.beat.stop(deregister=False)
        with contextlib.suppress(*_REDIS_ERRORS):
            await self.registry.remove(g.group_id, g.incarnation)
        if g.client is not None:
            await g.client.close()
        try:
            await g.server.stop()
        except Exception as exc:
            log.warning("group %s did not stop cleanly: %s", g.group_id, one_line(exc))
        await self._notify()

    async def stop(self) -> None:
        """Stop every group: all deregister first, so routers stop sending work before ranks go."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        groups = list(self.groups.values())
        for g in groups:
            self._probe.unwatch(g.group_id)
            if g.beat is not None:
                await g.beat.stop(deregister=False)
            with contextlib.suppress(*_REDIS_ERRORS):
                await self.registry.remove(g.group_id, g.incarnation)
        await asyncio.gather(*(self._stop(g) for g in groups), return_exceptions=True)
        if self._spares is not None:
            await self._spares.close()
        await asyncio.to_thread(self._probe.close)

    # ---- the registry -----------------------------------------------------------------------------
    async def _enter(self, g: SupervisedGroup, state: GroupState, message: str) -> None:
        """Move `g` to `state` and publish it at once (the heartbeat repeats it). A live or draining
        record carries the group's own numbers. Redis being away is not fatal: routers also learn
        of a failed group from its UNAVAILABLE answers, and the heartbeat publishes it later."""
        g.transition(state, message)
        try:
            record: WorkerGroup = await g.snapshot()
        except Exception:  # no Stats answer: the record without numbers
            record = g.record()
        try:
            await self.registry.publish(record)
        except _REDIS_ERRORS as exc:
            log.warning("group %s: could not publish %s now (Redis: %s)", g.group_id, state, exc)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
