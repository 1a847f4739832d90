"""`SupervisedGroup`: one EP group as its supervisor holds it: the group controller and its control
service (one address for the group's whole life, across restarts), its registration (state,
incarnation, restarts, reason) and the heartbeat that keeps that registration current.

What the registry says about a group comes from here: `record()` while it is not live (state,
reason, no capacity), the group's own Stats answer while it is live or draining (`snapshot`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from moeplane.api.enums import Role
from moeplane.workers.registry.heartbeat import Heartbeat
from moeplane.workers.registry.registrar import group_from_stats
from moeplane.workers.serving.client import WorkerControlClient, WorkerControlError
from moeplane.workers.serving.controller import GroupController, GroupSpec
from moeplane.workers.serving.sequence import FinishReason, SamplingParams
from moeplane.workers.serving.service import ControlServer
from moeplane.workers.supervisor.policy import RestartStreak, next_incarnation

from moeplane.bus.registry import GroupState, WorkerGroup

# The health probe's one-token request: any id in the vocabulary, greedy, so it is deterministic.
_PROBE_TOKEN_ID = 0


STATS_TIMEOUT_S = 2.0
STALE_NUMBERS_S = 30.0  # a heartbeat may repeat the group's last Stats numbers this long


@dataclass(frozen=True)
class PoolIdentity:
    """The pool a supervisor runs: what every registration of its groups carries."""

    role: Role
    pool: str  # the MoEPool's name; in embedded mode the role
    model: str  # the served model name
    revision: str = ""  # the pool revision the groups start from (rollouts)


class ProbeFailed(RuntimeError):
    """A group that started did not answer its health probe (the message says how)."""


class SupervisedGroup:
    def __init__(
        self,
        index: int,
        spec: GroupSpec,
        pool: PoolIdentity,
        controller: GroupController,
        server: ControlServer,
    ) -> None:
        self.index = index
        self.spec = spec
        self.pool = pool
        self.controller = controller
        self.server = server
        self.address = ""  # as registered: what routers dial
        self.client: WorkerControlClient | None = None  # the supervisor's own, over loopback
        self.beat: Heartbeat | None = None
        self.state = GroupState.STARTING
        self.message = "starting"
        self.restarts = 0
        self.incarnation = next_incarnation(0)
        self.streak = RestartStreak()
        self._numbers: WorkerGroup | None = None  # the last Stats answer, as a record
        self._numbers_at_s = 0.0

    @property
    def group_id(self) -> str:
        return self.spec.group_id

    @property
    def role(self) -> Role:
        return self.pool.role

    def transition(self, state: GroupState, message: str) -> None:
        """Enter `state` under a new incarnation (publish the new record at once)."""
        self.state, self.message = state, message
        self.incarnation = next_incarnation(self.incarnation)
        if state not in (GroupState.LIVE, GroupState.DRAINING):
            self._numbers = None  # a restarted group's numbers start afresh
        if state is GroupState.LIVE:
            self.streak.on_live(time.monotonic())

    def record(self, at_s: float | None = None) -> WorkerGroup:
        """The registration without the group's numbers (not live: it offers no capacity)."""
        engine = self.spec.rank.engine
        return WorkerGroup(
            group_id=self.group_id, role=self.role, address=self.address, model=self.pool.model,
            ep_size=self.spec.ep_size, block_size_tokens=engine.block_size,
            kv_blocks_total=engine.num_blocks * self.spec.ep_size, kv_blocks_free=0, max_blocks_per_rank=0,
            queue_depth=0, heartbeat_at_s=time.time() if at_s is None else at_s,
        ).model_copy(update=self._fields())

    def _fields(self) -> dict[str, object]:
        """What the supervisor says about the group, on top of the group's own numbers."""
        return {
            "state": self.state, "pool": self.pool.pool, "revision": self.pool.revision,
            "restarts": self.restarts, "message": "" if self.state is GroupState.LIVE else self.message,
            "incarnation": self.incarnation,
        }

    async def snapshot(self) -> WorkerGroup:
        """The heartbeat's record: the group's own numbers while it serves (live or draining), else
        `record()`. Taken under the incarnation current when it starts: a state change during
        the Stats call makes the registry refuse it."""
        fields, at_s = self._fields(), time.time()
        if self.state not in (GroupState.LIVE, GroupState.DRAINING) or self.client is None:
            return self.record(at_s)
        try:
            stats = await self.client.stats(timeout_s=STATS_TIMEOUT_S)
        except WorkerControlError:
            # Whether the group is alive is the liveness probe's question (a dead or hung rank
            # moves it out of live at once); a Stats call slow on a busy host must not let a
            # healthy group's registration lapse. Its last numbers stand in, for a bounded time.
            if self._numbers is None or at_s - self._numbers_at_s > STALE_NUMBERS_S:
                raise
            # heartbeat_at_s stays the numbers' time: routers count their reservations since then.
            return self._numbers.model_copy(update=fields)
        numbers = group_from_stats(stats, self.address, self.pool.model, at_s).model_copy(update=fields)
        self._numbers, self._numbers_at_s = numbers, at_s
        return numbers

    async def probe(self, timeout_s: float) -> None:
        """After the weights load: the group answers Health as serving and computes one token
        through its control service, with every rank in the forward (MoE collectives)."""
        client = self.client
        if client is None:
            raise ProbeFailed(f"group {self.group_id} has no control client")
        try:
            health = await client.health(timeout_s=timeout_s)
            if not health.serving:
                raise ProbeFailed(f"group {self.group_id} is not serving: {health.message}")
            rid = f"health-probe/{self.group_id}/{self.incarnation}"
            greedy = SamplingParams(temperature=0.0, max_tokens=1)
            if self.role is Role.PREFILL:
                out = await client.prefill(rid, [_PROBE_TOKEN_ID], greedy, timeout_s=timeout_s)
                finish = out.finish_reason
            else:
                finish = None
                async for ev in client.decode(rid, [_PROBE_TOKEN_ID], greedy, timeout_s=timeout_s):
                    if ev.finish_reason is FinishReason.ERROR:
                        raise ProbeFailed(f"group {self.group_id}'s probe request failed: {ev.error}")
                    finish = ev.finish_reason or finish
        except WorkerControlError as exc:
            raise ProbeFailed(f"group {self.group_id}'s health probe: {exc}") from None
        if finish is not FinishReason.LENGTH:
            raise ProbeFailed(f"group {self.group_id}'s probe request ended {finish}, not after one token")
