"""`GroupController`: one serving group (an EP group of prefill or decode ranks) as seen from outside.

It starts one `RankWorker` Ray actor per EP rank (placed by a `RankPlacement`), assigns each request
to one DP rank, and runs the group's step loop: every iteration all ranks step together (MoE layers
are collectives; idle ranks join with empty batches), new requests and cancellations ride along
with the step call, and outputs are routed back to each request's waiter. The gRPC control service
(`service.py`) is a thin adapter over this object; it lives in an asyncio loop (a process or an
async Ray actor).

Failure: a rank's death (Ray fails its step, or a supervisor's liveness probe calls `fail`), a hung
or failed collective (bounded by the process-group timeout, then by `step_timeout_s`) all end in
`fail(reason)`: the group refuses new requests, every request it holds ends with an error of kind
GROUP_FAILED (UNAVAILABLE over gRPC: resume it elsewhere), and `on_failure(reason)` tells the
supervisor, once. A dead rank breaks the EP collective, so the group only ever restarts as a unit:
`close()` kills every rank, `start()` starts a fresh set. `drain()` makes the group refuse new
requests while it finishes the ones it holds (scale-down).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from moeplane.workers.eplb.driver import EplbDriver, GroupEplbStatus
from moeplane.workers.eplb.online import GroupEplb
from moeplane.workers.kv.layout import TransferHandle
from moeplane.workers.placement import Placement
from moeplane.workers.serving.actor import RankIdentity, RankSpec
from moeplane.workers.serving.config import EngineConfigError, Role
from moeplane.workers.serving.engine import NewRequest, RankStats, StepInput, TokenOutput
from moeplane.workers.serving.ranks import RankFailed, RankSet, one_line
from moeplane.workers.serving.sequence import EngineRequestError, ErrorKind, FinishReason, SamplingParams
from moeplane.workers.supervisor.placement import PoolResources, RankPlacement

log = logging.getLogger(__name__)

# How long close() waits for a step in flight to end before abandoning it.
_CLOSE_STEP_WAIT_S = 10.0


class GroupUnavailable(RuntimeError):
    """The group is not running (starting, draining, failed or closed); the request can go elsewhere."""


@dataclass(frozen=True)
class GroupSpec:
    group_id: str
    role: Role
    ep_size: int
    rank: RankSpec
    num_cpus_per_rank: float = 0.25
    # Above the ranks' collective (process-group) timeout, which fails a step first.
    step_timeout_s: float = 90.0
    start_timeout_s: float = 300.0
    eplb: GroupEplb | None = None  # None: EPLB off (the placement of `rank` never changes)

    def __post_init__(self) -> None:
        if self.ep_size < 1:
            raise EngineConfigError(f"ep_size must be >= 1, got {self.ep_size}")
        if self.rank.engine.role is not self.role:
            raise EngineConfigError(f"group role {self.role} but engine role {self.rank.engine.role}")
        if self.step_timeout_s <= self.rank.collective_timeout_s:
            raise EngineConfigError(
                f"step_timeout_s ({self.step_timeout_s}) must exceed the ranks' collective_timeout_s "
                f"({self.rank.collective_timeout_s}), so a hung collective fails the step first"
            )
        if self.eplb is not None and self.eplb.balance.num_gpus != self.ep_size:
            raise EngineConfigError(
                f"eplb.balance.num_gpus ({self.eplb.balance.num_gpus}) must equal ep_size ({self.ep_size})"
            )


@dataclass(frozen=True)
class GroupStats:
    group_id: str
    role: Role
    block_size: int
    ranks: tuple[RankStats, ...]
    queue_depth: int  # requests assigned and not finished, over all ranks

    @property
    def num_free_blocks(self) -> int:
        return sum(r.num_free_blocks for r in self.ranks)

    @property
    def num_used_blocks(self) -> int:
        return sum(r.num_used_blocks for r in self.ranks)


@dataclass
class _Waiter:
    rank: int
    queue: asyncio.Queue[TokenOutput] = field(default_factory=asyncio.Queue)
    arrival_s: float = field(default_factory=time.monotonic)
    dispatched_s: float | None = None  # when the step loop handed the request to its rank


@dataclass(frozen=True)
class PrefillOutput:
    output: TokenOutput
    queue_s: float  # submission to dispatch onto a rank: the wait on this group's step loop


FailureHook = Callable[[str], None]


class GroupController:
    def __init__(
        self,
        spec: GroupSpec,
        placement: RankPlacement | None = None,
        on_failure: FailureHook | None = None,
    ) -> None:
        self.spec = spec
        self.placement: RankPlacement = placement or PoolResources()
        self.on_failure = on_failure
        self._ranks: RankSet | None = None
        self._reset()

    def _reset(self) -> None:
        """The state of one run of the group (a restart starts from a clean one)."""
        spec = self.spec
        self._new: list[list[NewRequest]] = [[] for _ in range(spec.ep_size)]
        self._cancels: list[list[str]] = [[] for _ in range(spec.ep_size)]
        self._waiters: dict[str, _Waiter] = {}
        self._stats: list[RankStats | None] = [None] * spec.ep_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error: str | None = None
        self._closing = False
        self._draining = False
        self._between_steps: list[tuple[Placement, asyncio.Future[None]]] = []
        self._eplb = (
            None if spec.eplb is None else EplbDriver(spec.eplb, spec.role, spec.group_id, self._wake.set)
        )
        # Handed-off prefills -> (rank, lease expiry, Unix s): a Cancel then frees the leased KV.
        self._handed_off: dict[str, tuple[int, float]] = {}

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self, spares: list[Any] | None = None) -> None:
        """Start a fresh set of ranks: spawn (or take `spares`, actors spawned ahead), join the process
        group, load the weights, allocate the KV cache."""
        if self._ranks is not None:
            raise RuntimeError(f"group {self.spec.group_id} is running; close() it before starting again")
        self._reset()
        spec = self.spec
        self._ranks = RankSet(spec, self.placement, spares)
        try:
            rank_spec = await self._rank_spec()
            self._stats = list(await self._ranks.start(rank_spec))
        except BaseException:
            await self.close()
            raise
        self._task = asyncio.create_task(self._run(), name=f"group-{spec.group_id}")
        if self._eplb is not None:
            self._eplb.start()

    async def _rank_spec(self) -> RankSpec:
        """The ranks' spec; with EPLB, the pool's placement and load counting switched on."""
        rank, eplb = self.spec.rank, self.spec.eplb
        if self._eplb is None or eplb is None:
            return rank
        arch = rank.arch
        start = rank.placement or Placement.identity(arch.num_moe_layers, arch.num_routed_experts)
        engine = dataclasses.replace(
            rank.engine, expert_load_window_s=eplb.window_s, expert_load_buckets=eplb.num_buckets,
            move_layers_per_step=eplb.layers_per_step,
        )
        placement = await asyncio.wait_for(self._eplb.initial_placement(start), self.spec.start_timeout_s)
        return dataclasses.replace(rank, placement=placement, engine=engine)

    async def close(self) -> None:
        """Stop the ranks. A healthy group finishes its step in flight and closes them cleanly; a
        failed one is killed at once (its ranks may be dead or hung in a collective)."""
        self._closing = True
        if self._eplb is not None:
            await self._eplb.close()
        self._wake.set()
        failed = self._error is not None
        if self._task is not None:
            if not failed:
                # Let a step in flight finish first: closing ranks in the middle of a collective
                # leaves their peers blocked in it until the collective timeout.
                await asyncio.wait({self._task}, timeout=_CLOSE_STEP_WAIT_S)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._fail_all(self._error or f"group {self.spec.group_id} shut down")
        ranks, self._ranks = self._ranks, None
        if ranks is not None:
            await ranks.close(graceful=not failed)

    def fail(self, reason: str) -> None:
        """The group lost a rank (or a step failed): refuse new requests, end every request it holds
        with GROUP_FAILED so callers resume it elsewhere, stop the step loop, tell `on_failure`.
        Idempotent: only the first reason counts."""
        if self._error is not None or self._closing:
            return
        self._error = f"group {self.spec.group_id}: {reason}"
        self._fail_all(self._error)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._wake.set()
        if self.on_failure is not None:
            self.on_failure(reason)

    def drain(self) -> None:
        """Refuse new requests (UNAVAILABLE, so routers go elsewhere); the ones held go on."""
        self._draining = True

    @property
    def num_requests(self) -> int:
        """Requests the group is working on: queued or running (a prefill until its hand-off; the
        KV it then holds under a lease shows in the ranks' stats)."""
        return len(self._waiters)

    @property
    def actors(self) -> list[Any]:
        """The rank actors, in rank order (for a liveness probe); empty when not running."""
        return [] if self._ranks is None else list(self._ranks.actors)

    @property
    def identities(self) -> list[RankIdentity]:
        """Per rank, its process and node (empty when not running)."""
        return [] if self._ranks is None else list(self._ranks.identities)

    @property
    def kv_addresses(self) -> list[str]:
        return [] if self._ranks is None else list(self._ranks.kv_addresses)

    def _rank_set(self) -> RankSet:
        if self._ranks is None:
            raise GroupUnavailable(f"group {self.spec.group_id} is not running")
        return self._ranks

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done() and self._error is None

    @property
    def status_message(self) -> str:
        if self._error:
            return self._error
        if self._draining and self.healthy:
            return "draining"
        return "serving" if self.healthy else "not started"

    # ---- requests ---------------------------------------------------------------------------------
    async def prefill(
        self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams
    ) -> PrefillOutput:
        """Compute the prompt and sample the first token; the output carries the KV handle unless the
        request already finished."""
        if self.spec.role is not Role.PREFILL:
            raise EngineRequestError("role", f"group {self.spec.group_id} is a {self.spec.role} group")
        waiter = self._submit(NewRequest(request_id, tuple(prompt_token_ids), sampling))
        try:
            out = await waiter.queue.get()
        except asyncio.CancelledError:
            # Also after the hand-off: the rank then drops the KV lease nobody will pull.
            self._waiters.pop(request_id, None)
            self._cancels[waiter.rank].append(request_id)
            self._wake.set()
            raise
        self._waiters.pop(request_id, None)
        queued_s = (waiter.dispatched_s or waiter.arrival_s) - waiter.arrival_s
        return PrefillOutput(out, queued_s)

    async def decode(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: SamplingParams,
        first_token_id: int | None = None,
        kv: TransferHandle | None = None,
    ) -> AsyncGenerator[TokenOutput, None]:
        """Stream the request's outputs until one carries a finish reason. Closing the iterator
        early (a client that went away) cancels the request and frees its blocks."""
        if self.spec.role is not Role.DECODE:
            raise EngineRequestError("role", f"group {self.spec.group_id} is a {self.spec.role} group")
        waiter = self._submit(NewRequest(request_id, tuple(prompt_token_ids), sampling, first_token_id, kv))
        finished = False
        try:
            while not finished:
                out = await waiter.queue.get()
                finished = out.finish_reason is not None
                yield out
        finally:
            if not finished:
                await self.cancel(request_id)
            self._waiters.pop(request_id, None)

    async def cancel(self, request_id: str) -> bool:
        waiter = self._waiters.get(request_id)
        if waiter is not None:
            rank = waiter.rank
        else:  # a prefill after its hand-off: its rank still holds the KV under a lease
            handed = self._handed_off.pop(request_id, None)
            if handed is None or handed[1] < time.time():
                return False
            rank = handed[0]
        self._cancels[rank].append(request_id)
        self._wake.set()
        return True

    def _submit(self, req: NewRequest) -> _Waiter:
        if not self.healthy or self._draining:
            raise GroupUnavailable(f"group {self.spec.group_id} is not serving: {self.status_message}")
        if req.request_id in self._waiters:
            raise EngineRequestError("request_id", f"{req.request_id!r} is already being served")
        waiter = _Waiter(self._pick_rank())
        self._waiters[req.request_id] = waiter
        self._new[waiter.rank].append(req)
        self._wake.set()
        return waiter

    def _pick_rank(self) -> int:
        """Fewest requests in flight; ties go to the rank with the most free blocks."""
        load = [0] * self.spec.ep_size
        for waiter in self._waiters.values():
            load[waiter.rank] += 1
        free = [s.num_free_blocks if s is not None else 0 for s in self._stats]
        return min(range(self.spec.ep_size), key=lambda r: (load[r], -free[r], r))

    # ---- the step loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        busy = False
        try:
            while not self._closing:
                if self._between_steps:
                    await self._apply_placements()
                eplb = self._eplb
                has_input = any(self._new) or any(self._cancels) or (eplb is not None and eplb.wants_step)
                if not has_input and not busy:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                target, collect = (None, False) if eplb is None else eplb.next_step()
                inputs = [
                    StepInput(tuple(n), tuple(c), target, collect)
                    for n, c in zip(self._new, self._cancels, strict=True)
                ]
                now = time.monotonic()
                for req in (r for n in self._new for r in n):
                    if (w := self._waiters.get(req.request_id)) is not None:
                        w.dispatched_s = now
                self._new = [[] for _ in range(self.spec.ep_size)]
                self._cancels = [[] for _ in range(self.spec.ep_size)]
                results = await self._rank_set().step(inputs)
                for rank, result in enumerate(results):
                    self._stats[rank] = result.stats
                    for out in result.outputs:
                        self._deliver(out)
                if eplb is not None:
                    eplb.on_step(
                        [r.placement_version for r in results], [r.moving for r in results],
                        [r.load_window for r in results],
                    )
                busy = any(s.num_running + s.num_waiting + s.num_importing for s in self._stats if s)
                if busy and not results[0].group_ran_forward:
                    await asyncio.sleep(0.002)  # only KV pulls in flight: poll gently
        except asyncio.CancelledError:
            raise
        except RankFailed as exc:
            self.fail(str(exc))
        except Exception as exc:  # a bug here, not a rank's failure: keep the traceback
            log.exception("group %s step loop failed", self.spec.group_id)
            self.fail(f"step loop failed: {one_line(exc)}")

    async def set_placement(self, placement: Placement) -> None:
        """Switch every rank to a new expert placement between two steps (no request is dropped)."""
        if not self.healthy:
            raise GroupUnavailable(f"group {self.spec.group_id} is not serving: {self.status_message}")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._between_steps.append((placement, done))
        self._wake.set()
        await done

    async def _apply_placements(self) -> None:
        pending, self._between_steps = self._between_steps, []
        for placement, done in pending:
            try:
                await self._rank_set().call("set_placement", placement)
                done.set_result(None)
            except Exception as exc:
                done.set_exception(exc)
                raise

    def eplb_status(self) -> GroupEplbStatus | None:
        """The group's EPLB loop: placement in force, switch in progress, measured balancedness."""
        return None if self._eplb is None else self._eplb.status()

    async def take_expert_load(self) -> list[Any]:
        """Per rank, [num_moe_layers, slots_per_rank] int64 rows per expert slot since the last call."""
        return await self._rank_set().call("take_expert_load")

    def _deliver(self, out: TokenOutput) -> None:
        waiter = self._waiters.get(out.request_id)
        if waiter is None:
            return  # its caller is gone (cancelled); the rank has freed or will free its blocks
        waiter.queue.put_nowait(out)
        if out.kv is not None:
            now = time.time()  # leases are granted in order: expired entries sit at the front
            while self._handed_off and next(iter(self._handed_off.values()))[1] < now:
                del self._handed_off[next(iter(self._handed_off))]
            self._handed_off[out.request_id] = (waiter.rank, out.kv.lease_expires_at_s)
        if out.finish_reason is not None or out.kv is not None:
            self._waiters.pop(out.request_id, None)

    def _fail_all(self, error: str) -> None:
        for rid, waiter in list(self._waiters.items()):
            waiter.queue.put_nowait(
                TokenOutput(rid, (), "", 0, FinishReason.ERROR, error, ErrorKind.GROUP_FAILED)
            )
        self._waiters.clear()
        self._handed_off.clear()  # the ranks holding those leases are going away

    # ---- introspection ---------------------------------------------------------------------------
    async def stats(self) -> GroupStats:
        """Fresh per-rank stats (they wait for a step in progress)."""
        if self._ranks is not None and self.healthy:
            try:
                self._stats = list(await self._ranks.call("stats"))
            except Exception as exc:  # a rank died under the call: the failure path reports it
                raise GroupUnavailable(f"group {self.spec.group_id}: no stats: {one_line(exc)}") from None
        ranks = tuple(s for s in self._stats if s is not None)
        return GroupStats(
            self.spec.group_id, self.spec.role, self.spec.rank.engine.block_size, ranks, len(self._waiters)
        )

    async def check_invariants(self) -> None:
        await self._rank_set().call("check_invariants")
