"""Online EPLB in a serving group: a 2-rank CPU decode group (Ray actors, gloo) whose router
favours three experts that all start on rank 0.

The ranks count their routed tokens, upload windows to a real Redis, the group's balancer sees
the imbalance and publishes placement v1, and the ranks move expert weights between forward
passes while requests keep streaming. No request fails, greedy output equals the single-process
reference before, across and after the switch, and the balancedness the workers measure rises.

Nothing here depends on how fast the machine is: the traffic runs until the group reports a
measured rebalanced placement (an event, under a generous deadline), and when the balancer acts
is not asserted, only that it did and what it did (the version advanced, weights moved, a request
in flight across the switch kept its exact tokens).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import pytest
import pytest_asyncio
import redis
from moeplane.api.enums import EplbMode, Role
from moeplane.api.presets import model_preset
from moeplane.workers.eplb.controller import ControllerConfig, Rebalance
from moeplane.workers.eplb.driver import GroupEplbStatus
from moeplane.workers.eplb.online import GroupEplb
from moeplane.workers.eplb.store import EplbStore
from moeplane.workers.model import RandomWeights
from moeplane.workers.model.reference import reference_greedy
from moeplane.workers.model.skew import RoutingSkew, SkewedWeights
from moeplane.workers.model.weights import full_state_dict
from moeplane.workers.placement import Placement
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.config import SchedulerConfig
from moeplane.workers.serving.controller import GroupController, GroupSpec
from moeplane.workers.serving.engine import EngineConfig
from moeplane.workers.serving.sequence import FinishReason, SamplingParams

from moeplane.bus.eplb import PoolEplbStatus
from moeplane.bus.keys import DeploymentKeys

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ARCH = model_preset("tiny")  # 3 MoE layers x 16 experts in 4 groups, top-4
SEED = 5
# Experts 4-6 share a routing group and sit on rank 0 under the starting placement (slot e holds
# expert e % 16; 20 slots, 10 per rank): rank 0 computes about three quarters of the pairs.
WEIGHTS = SkewedWeights(RandomWeights(ARCH, SEED), ARCH, RoutingSkew(hot_experts=(4, 5, 6), bias=1.0))
SCHED = SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=16, max_model_len=512)
INTERVAL_S = 2.0
WINDOW_S = 6.0
MIN_STEPS = 2
DEADLINE_S = 480.0  # a bound on a hang, not an expectation (the per-test limit is 600 s)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def group(ray_local, redis_server):
    keys = DeploymentKeys("test-eplb", uuid.uuid4().hex[:8])
    eplb = GroupEplb(
        mode=EplbMode.ONLINE,
        redis_url=redis_server.url,
        keys=keys,
        window_s=WINDOW_S,
        interval_s=INTERVAL_S,
        # Two forward steps in a window suffice for this skew: the rule of eight (the product's
        # default, for noise on real traffic) is speed-dependent with a short window, and two busy
        # loops beside the suite slowed this group below eight steps in 2 s (measured 0.58, no
        # rebalance in 240 s).
        balance=ControllerConfig(
            threshold=0.9, num_groups=ARCH.n_group, num_nodes=1, num_gpus=2, min_steps=MIN_STEPS
        ),
        publish_s=0.25,
        layers_per_step=1,
    )
    engine = EngineConfig(role=Role.DECODE, num_blocks=128, block_size=16, scheduler=SCHED)
    start = Placement.identity(ARCH.num_moe_layers, ARCH.num_routed_experts, ARCH.num_routed_experts + 4)
    rank = RankSpec(arch=ARCH, weights=WEIGHTS, engine=engine, placement=start)
    controller = GroupController(GroupSpec("d-eplb", Role.DECODE, 2, rank, num_cpus_per_rank=0.25, eplb=eplb))
    await controller.start()
    yield controller, keys
    await controller.close()


async def run(controller: GroupController, rid: str, prompt: list[int], sampling: SamplingParams):
    """(tokens, finish reason, placement version when it started, when it ended)."""
    status = controller.eplb_status()
    assert status is not None
    started = status.placement_version
    tokens: list[int] = []
    reason = None
    async for out in controller.decode(rid, prompt, sampling):
        assert not out.error, out.error
        tokens.extend(out.token_ids)
        reason = out.finish_reason
    ended = controller.eplb_status()
    assert ended is not None
    return tokens, reason, started, ended.placement_version


async def test_rebalance_under_traffic_keeps_outputs_and_raises_balancedness(group, redis_server) -> None:
    controller, keys = group
    state = full_state_dict(ARCH, WEIGHTS)
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    fixed = list(range(40, 60))
    # No traffic has run yet, so the balancer has had nothing to act on: this starts under v0. On a
    # slow machine the balancer may act before it finishes; then it is one of the spanning requests.
    before, reason, v_start, v_end = await run(controller, "fixed-before", fixed, greedy)
    assert v_start == 0, "the balancer acted with no traffic"
    assert before == reference_greedy(ARCH, state, fixed, 12) and reason is FinishReason.LENGTH

    # Traffic until the group runs a rebalanced placement and has measured it more balanced, and the
    # pool's status (what the operator and the planner read) says so too. Measurements are over
    # sliding windows of whatever traffic ran; the wait absorbs a noisy window on a slow machine.
    rng = random.Random(0)
    results: dict[str, tuple[list[int], list[int], FinishReason | None, int, int]] = {
        "fixed-before": (fixed, before, reason, v_start, v_end)
    }
    store = EplbStore(redis.Redis.from_url(redis_server.url), keys, Role.DECODE)
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + DEADLINE_S

    def settled() -> bool:
        if seen:
            return True
        s = controller.eplb_status()
        assert s is not None
        first = s.last_rebalance
        if s.moving_to is not None or not s.measured_version or not isinstance(first, Rebalance):
            return False
        if s.measured is None or s.measured <= first.measured + 0.1:
            return False
        pool = store.read_status()
        if not pool.balancedness_version or pool.balancedness is None or pool.balancedness <= first.measured:
            return False
        seen.update(status=s, pool=pool)
        return True

    async def client(worker: int) -> None:
        n = 0
        while not settled() and time.monotonic() < deadline:
            rid = f"w{worker}-{n}"
            prompt = [rng.randrange(ARCH.vocab_size) for _ in range(rng.randint(4, 24))]
            sampling = SamplingParams(temperature=0.0, max_tokens=rng.randint(16, 48), ignore_eos=True)
            tokens, why, v0, v1 = await run(controller, rid, prompt, sampling)
            results[rid] = (prompt, tokens, why, v0, v1)
            n += 1

    await asyncio.gather(*(client(i) for i in range(6)))
    assert settled(), f"no measured rebalance within {DEADLINE_S:.0f}s: {controller.eplb_status()}"
    status: GroupEplbStatus = seen["status"]
    assert status.rebalances >= 1 and status.placement_version >= 1
    first = status.last_rebalance
    assert isinstance(first, Rebalance) and first.moved_slots > 0
    assert first.expected_after > first.expected_before  # the balancer's own prediction, same window
    assert status.measured is not None and status.measured > first.measured + 0.1

    assert results and all(why is FinishReason.LENGTH for _, _, why, _, _ in results.values())
    spanning = [rid for rid, (*_, v0, v1) in results.items() if v0 == 0 and v1 >= 1]
    assert spanning, "no request was in flight while the experts moved"
    for rid in spanning[:3]:  # the reference is slow: a few in-flight requests suffice
        prompt, tokens, *_ = results[rid]
        assert tokens == reference_greedy(ARCH, state, prompt, len(tokens)), rid

    after, reason, *_ = await run(controller, "fixed-after", fixed, greedy)
    assert after == before and reason is FinishReason.LENGTH

    # What the operator and the planner read: the pool's version and measured balancedness.
    pool: PoolEplbStatus = seen["pool"]
    assert pool.placement_version is not None and pool.placement_version >= 1
    assert pool.balancedness_version is not None and pool.balancedness_version >= 1
    stored = store.read_placement()  # placements only advance: a later one may have followed
    assert stored is not None and stored.version >= pool.placement_version
    store.client.close()
