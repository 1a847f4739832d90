"""`EmbeddedStack.scale_pool` on the real stack (Ray rank actors, redis-server, frontend): a pool
grows by a registered, routed group, and shrinks back while requests stream through the surplus
group, which drains (it refuses new requests itself and says so in the registry, whatever any
frontend knows) and is stopped only after they finish, so none is stranded."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
import pytest_asyncio
from moeplane.api.enums import Role
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest, plan_from_deployment
from moeplane.workers.embedded.scaling import ScaleError
from moeplane.workers.embedded.stack import EmbeddedStack, StackOptions
from moeplane.workers.serving.client import WorkerControlClient, WorkerControlError
from moeplane.workers.serving.sequence import SamplingParams

from moeplane.bus.registry import GroupState
from moeplane.bus.request_metrics import read_request_records
from tests.waits import until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PLAN = plan_from_deployment(load_manifest(DEFAULT_MANIFEST), max_model_len=512)
NUM_TOKENS = 96
# Bounds on waits for events, far past any wait: on a busy machine a group takes minutes to start.
WAIT_S = 300.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(ray_local):
    s = EmbeddedStack(PLAN, StackOptions(port=0, request_timeout_s=600, drain_timeout_s=600))
    await s.start()
    yield s
    await s.stop()


async def stream(client: openai.AsyncOpenAI, i: int, started: asyncio.Event | None) -> tuple[str, int]:
    """(finish reason, chunks) of one streaming completion."""
    out = await client.completions.create(
        model=PLAN.served_model,
        prompt=f"request {i} drains cleanly",
        max_tokens=NUM_TOKENS,
        stream=True,
        temperature=0.0,
        extra_body={"ignore_eos": True},
    )
    chunks, reason = 0, ""
    async for chunk in out:
        chunks += 1
        if chunks >= 3 and started is not None:
            started.set()
        reason = chunk.choices[0].finish_reason or reason
    return reason, chunks


async def test_scale_up_then_down_with_requests_in_flight(stack: EmbeddedStack) -> None:
    assert stack.pool_groups(Role.DECODE) == (1, 1)
    with pytest.raises(ScaleError, match=r"spec\.decode: 3 groups"):
        await stack.scale_pool(Role.DECODE, 3)  # the manifest's maxReplicas is 2

    await stack.scale_pool(Role.DECODE, 2)
    assert stack.pool_groups(Role.DECODE)[0] == 2
    await until(lambda: stack.pool_groups(Role.DECODE) == (2, 2), "decode-1 to register", WAIT_S)
    assert stack.frontend is not None
    await until(lambda: stack.frontend.cache.counts()[Role.DECODE] == 2, "the router to see decode-1", WAIT_S)

    # Enough concurrent streams that the router (most free KV blocks wins) puts some on decode-1.
    client = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)
    events = [asyncio.Event() for _ in range(4)]
    tasks = [asyncio.create_task(stream(client, i, ev)) for i, ev in enumerate(events)]
    await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in events)), WAIT_S)
    assert not any(t.done() for t in tasks), "requests finished before the shrink: make them longer"

    surplus = stack.group("decode-1")
    shrink = stack.request_scale(Role.DECODE, 1)  # drains decode-1, then stops it
    await until(lambda: surplus.state is GroupState.DRAINING, "decode-1 to drain", WAIT_S)
    # The group itself refuses new work (UNAVAILABLE: routers go elsewhere) and the registry says
    # why, for every frontend.
    direct = WorkerControlClient(surplus.address, stack.security)
    with pytest.raises(WorkerControlError, match=r"UNAVAILABLE: .*draining"):
        async for _ in direct.decode("direct-1", [1, 2, 3], SamplingParams(max_tokens=2)):
            pass
    await direct.close()
    registry = stack._registry
    assert registry is not None
    states: dict[str, GroupState] = {}
    deadline = time.monotonic() + WAIT_S
    while states.get("decode-1") is not GroupState.DRAINING:  # published right after the switch
        assert time.monotonic() < deadline, states
        states = {g.group_id: g.state for g in await registry.groups()}
        await asyncio.sleep(0.02)
    assert states["decode-0"] is GroupState.LIVE
    await asyncio.wait_for(shrink, WAIT_S)
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert [r[0] for r in results] == ["length"] * 4, results

    records: list = []

    async def read() -> None:
        nonlocal records
        records, _ = await read_request_records(stack.frontend.redis, PLAN.keys, count=100)

    deadline = time.monotonic() + WAIT_S
    while len(records) < 4 and time.monotonic() < deadline:
        await read()
        await asyncio.sleep(0.2)
    on_surplus = [r for r in records if r.decode_group == "decode-1"]
    assert on_surplus, f"no request was routed to decode-1: {[r.decode_group for r in records]}"
    assert [(r.status.value, r.osl_tokens) for r in records] == [("ok", NUM_TOKENS)] * 4
    # The surplus group was stopped only after its requests had finished there: each finished on
    # decode-1 without moving (a stop mid-stream would have resumed it on decode-0, a retry), and
    # no drain ran out of time. Events, not clocks: a busy machine delays the last chunks.
    assert [r.retries for r in on_surplus] == [0] * len(on_surplus), on_surplus
    assert stack.num_drain_timeouts == 0

    assert stack.pool_groups(Role.DECODE) == (1, 1)
    assert [g.group_id for g in stack.groups if g.role is Role.DECODE] == ["decode-0"]
    live = await stack._registry.live_groups() if stack._registry else []
    assert sorted(g.group_id for g in live) == ["decode-0", "prefill-0"]

    # The stack still serves on what is left.
    reason, _ = await stream(client, 99, None)
    assert reason == "length"
