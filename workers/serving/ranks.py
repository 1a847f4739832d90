"""`RankSet`: the Ray actors of one run of a group's ranks: placed, started, stepped together, killed.

A group never repairs a rank set: a dead rank breaks the EP collective, so its controller kills the
whole set and starts a fresh one (see `GroupController`). Every failure comes out as `RankFailed`
with the rank named, in one line (Ray's own messages span pages).

A set may start from spare actors (`SpareRanks`): processes spawned ahead, their imports (torch,
the model code) done, which a restart then only has to assign, join and load, instead of waiting
for new processes to start: seconds instead of tens of seconds on a busy CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import TYPE_CHECKING, Any

import ray
from moeplane.workers.serving.actor import LIVENESS_GROUP, RankIdentity, RankSpec, RankWorker
from moeplane.workers.serving.engine import RankStats, StepInput, StepResult

if TYPE_CHECKING:
    from moeplane.workers.serving.controller import GroupSpec
    from moeplane.workers.supervisor.placement import RankPlacement

log = logging.getLogger(__name__)

# The rank actor class: the default concurrency group runs steps (and stats or placement calls
# beside them), the liveness group answers `ping` on a thread of its own.
RankActor = ray.remote(  # type: ignore[call-overload]  # ray's stubs omit these options
    concurrency_groups={LIVENESS_GROUP: 1}, max_concurrency=2
)(RankWorker)

# How long a clean close waits for each rank to shut its KV transport and process group.
_CLOSE_RANK_S = 20.0
# After a failed step, how long the other ranks' results may take to say which rank died.
_DIAGNOSE_S = 2.0


class RankFailed(RuntimeError):
    """A rank died, failed its step, or the step timed out (the message names the rank)."""


def one_line(exc: BaseException, limit: int = 240) -> str:
    """`Type: first line of the message`, short enough for one log line; for an error a rank
    raised, the rank's own error (Ray's wrapper starts with the call site)."""
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, BaseException):
        exc = exc.cause
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit]}" if text else type(exc).__name__


def rank_failure(rank: int, exc: BaseException) -> str:
    """Why rank `rank` failed, in one line: its death, or the error its step raised."""
    if isinstance(exc, ray.exceptions.RayActorError):
        return f"rank {rank} died ({type(exc).__name__})"
    if isinstance(exc, ray.exceptions.RayTaskError):
        return f"rank {rank} failed its step: {one_line(exc)}"
    return f"rank {rank}: {one_line(exc)}"


class RankSet:
    def __init__(self, spec: GroupSpec, placement: RankPlacement, spares: list[Any] | None = None) -> None:
        self.spec = spec
        self.placement = placement
        spares = list(spares or [])[: spec.ep_size]
        self.actors: list[Any] = spares + [
            RankActor.options(**placement.actor_options(spec, r)).remote(r, spec.ep_size)
            for r in range(len(spares), spec.ep_size)
        ]
        self.identities: list[RankIdentity] = []
        self.kv_addresses: list[str] = []

    async def start(self, rank_spec: RankSpec) -> list[RankStats]:
        """Join the process group, load the weights, allocate the KV cache; the ranks' first stats."""
        timeout_s = self.spec.start_timeout_s
        n = self.spec.ep_size
        assigned = asyncio.gather(*(a.assign.remote(r, n) for r, a in enumerate(self.actors)))
        await asyncio.wait_for(assigned, timeout_s)
        init = await asyncio.wait_for(
            self.actors[0].rendezvous_address.remote(rank_spec.bind_host), timeout_s
        )
        self.kv_addresses = list(await asyncio.wait_for(
            asyncio.gather(*(a.start.remote(init, rank_spec) for a in self.actors)), timeout_s
        ))
        self.identities = list(await asyncio.gather(*(a.ping.remote() for a in self.actors)))
        return list(await asyncio.gather(*(a.stats.remote() for a in self.actors)))

    async def step(self, inputs: list[StepInput]) -> list[StepResult]:
        """One step on every rank. The first rank to fail, or `step_timeout_s`, fails the step with
        the rank named; the other ranks' steps are abandoned (their collective errors out, or
        times out, and the set is killed anyway)."""
        futures = [
            asyncio.ensure_future(asyncio.wrap_future(a.step.remote(i).future()))
            for a, i in zip(self.actors, inputs, strict=True)
        ]
        done, pending = await asyncio.wait(
            futures, timeout=self.spec.step_timeout_s, return_when=asyncio.FIRST_EXCEPTION
        )

        def errors(among: set[asyncio.Future[Any]]) -> list[tuple[int, BaseException]]:
            return [(r, e) for r, f in enumerate(futures) if f in among and (e := f.exception()) is not None]

        failed = errors(done)
        if failed and pending:
            # A survivor's collective often fails first ("connection reset by peer"): give the dead
            # rank's own error a moment to arrive, so the reason names the rank that died.
            more, pending = await asyncio.wait(pending, timeout=_DIAGNOSE_S)
            failed += errors(more)
        for fut in pending:
            fut.cancel()
        if failed:
            died = [(r, e) for r, e in failed if isinstance(e, ray.exceptions.RayActorError)]
            rank, exc = (died or failed)[0]
            raise RankFailed(rank_failure(rank, exc))
        if pending:
            slow = [r for r, f in enumerate(futures) if f in pending]
            raise RankFailed(f"ranks {slow} did not finish a step in {self.spec.step_timeout_s:g} s")
        return [f.result() for f in futures]

    async def call(self, method: str, *args: Any) -> list[Any]:
        """`method(*args)` on every rank, in rank order."""
        return list(await asyncio.gather(*(getattr(a, method).remote(*args) for a in self.actors)))

    async def close(self, graceful: bool) -> None:
        """Stop every rank: cleanly (KV transport, process group) when `graceful`, then kill."""
        if graceful:
            for actor in self.actors:
                try:
                    await asyncio.wait_for(actor.close.remote(), _CLOSE_RANK_S)
                except Exception:  # a dead or stuck rank is killed below either way
                    log.warning("a rank of group %s did not close cleanly", self.spec.group_id)
        self.kill()

    def kill(self) -> None:
        """Kill every rank now. Ray force-kills a process that does not answer only after a delay,
        so a rank on this node (a hung one, say) also gets SIGKILL at once."""
        here = ray.get_runtime_context().get_node_id()
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        for ident in self.identities:
            if ident.node_id == here and ident.pid != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(ident.pid, signal.SIGKILL)
        self.actors, self.identities = [], []
        self.placement.release(self.spec)


class SpareRanks:
    """Up to `size` rank actors spawned ahead (their imports done), for a group's next start.

    `take` hands out only spares that answered a ping (ready); `fill` tops the pool up in the
    background. Spares hold the resources `options` asks of Ray, so they are for CPU pools (a GPU
    spare would hold a GPU)."""

    def __init__(self, size: int, options: dict[str, Any]) -> None:
        self.size = size
        self.options = options
        self._ready: list[Any] = []
        self._pending = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def num_ready(self) -> int:
        return len(self._ready)

    def take(self, n: int) -> list[Any]:
        taken, self._ready = self._ready[:n], self._ready[n:]
        self.fill()
        return taken

    def fill(self) -> None:
        """Spawn what is missing, in the background."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._fill(), name="spare-ranks")

    async def _fill(self) -> None:
        while len(self._ready) + self._pending < self.size:
            self._pending += 1
            actor = RankActor.options(**self.options).remote()
            try:
                await actor.ping.remote()
            except Exception as exc:  # Ray could not start it: try again on the next fill
                log.warning("a spare rank did not start: %s", one_line(exc))
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
                return
            finally:
                self._pending -= 1
            self._ready.append(actor)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for actor in self._ready:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self._ready = []
