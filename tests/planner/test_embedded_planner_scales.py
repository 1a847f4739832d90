"""The planner on the embedded stack (`moeplane up`): its loop observes the stack's Redis, decides
more groups, and scales the real stack's pool through the embedded adapters; the dashboard's API and
Apply work over the in-memory spec (there is no CR in embedded mode)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from moeplane.api.enums import Role
from moeplane.planner.adapters import DeploymentSource, PoolScaler
from moeplane.planner.embedded import APPLY_TARGET
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest, plan_from_deployment
from moeplane.workers.embedded.planner_host import read_manifest, start_planner
from moeplane.workers.embedded.stack import EmbeddedStack, StackOptions

from moeplane.bus.request_metrics import RequestRecord, RequestStatus

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PLAN = plan_from_deployment(load_manifest(DEFAULT_MANIFEST), max_model_len=512)
WAIT_S = 300.0  # bound on every wait for an event: generous, a busy machine is slow
TOKEN = "embedded-token"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(ray_local):
    s = EmbeddedStack(PLAN, StackOptions(port=0, request_timeout_s=600, drain_timeout_s=600))
    await s.start()
    yield s
    await s.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def planner(stack):
    host = await start_planner(stack, read_manifest(DEFAULT_MANIFEST), "127.0.0.1", 0, TOKEN, tick=False)
    yield host
    await host.stop()


async def overload(stack: EmbeddedStack, span_s: float, rate_per_s: float) -> None:
    """Served requests over the last `span_s` seconds, far over the SLA (TTFT 1 s, ITL 200 ms)."""
    assert stack.frontend is not None
    now = time.time()
    rng = np.random.default_rng(0)
    arrivals = np.sort(rng.uniform(now - span_s, now - 3.0, int(rate_per_s * span_s)))
    async with stack.frontend.redis.pipeline(transaction=False) as pipe:
        for i, at in enumerate(arrivals):
            rec = RequestRecord(
                request_id=f"load-{i}",
                model=PLAN.served_model,
                status=RequestStatus.OK,
                isl_tokens=8000,
                osl_tokens=2000,
                ttft_ms=float(rng.uniform(4000, 6000)),
                itl_ms=float(rng.uniform(400, 600)),
                e2e_ms=2_000.0,  # ended by now: the frontend writes a record when its request ends
                arrived_at_s=float(at),
            )
            pipe.xadd(PLAN.keys.request_metrics(), rec.to_fields())
        await pipe.execute()


async def test_the_planner_loop_scales_the_stack(stack: EmbeddedStack, planner) -> None:
    assert isinstance(planner.source, DeploymentSource) and isinstance(planner.pools, PoolScaler)
    key = (PLAN.keys.namespace, PLAN.keys.deployment)
    dp = planner.service.deployments[key]
    await overload(stack, span_s=40.0, rate_per_s=50.0)

    result = await dp.tick(time.time())
    assert result is not None
    grown = [r for r in Role if result.decision.pool(r).desired_groups > 1]
    assert grown, f"the core kept one group per pool: {result.decision.to_dict()}"
    assert result.applied
    assert planner.pools.scales == [(r, 2) for r in grown]
    for role in grown:
        assert stack.pool_groups(role)[0] == 2
    deadline = time.monotonic() + WAIT_S  # new groups start: slow on a busy machine
    while any(stack.pool_groups(r) != (2, 2) for r in grown):
        assert time.monotonic() < deadline, {r: stack.pool_groups(r) for r in Role}
        await asyncio.sleep(0.2)
    assert sorted(g.group_id for g in stack.groups) == sorted(
        ["prefill-0", "decode-0", *(f"{r.value}-1" for r in grown)]
    )
    # The in-memory status has the decision, as a CR's status would.
    obj = await planner.source.get(*key)
    assert obj["status"]["lastDecision"]["applied"] is True

    # The dashboard's API reads the grown pools from the stack.
    want = {r.value: {"replicas": 2, "readyGroups": 2} for r in grown}
    deadline = time.monotonic() + WAIT_S
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{planner.url}/api/deployments") as resp:
                assert resp.status == 200
                (summary,) = (await resp.json())["deployments"]
            if all({f: summary["pools"].get(k, {}).get(f) for f in v} == v for k, v in want.items()):
                break
            assert time.monotonic() < deadline, summary["pools"]
            await asyncio.sleep(0.2)
    assert summary["name"] == PLAN.keys.deployment


async def test_apply_edits_the_in_memory_spec(stack: EmbeddedStack, planner) -> None:
    key = (PLAN.keys.namespace, PLAN.keys.deployment)
    url = f"{planner.url}/api/deployments/{key[0]}/{key[1]}/apply"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"ttftMs": 1500}) as resp:
            assert resp.status == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(url, json={"ttftMs": 1500}, headers=auth) as resp:
            body = await resp.json()
            assert resp.status == 200, body
    assert body["target"] == APPLY_TARGET
    assert body["generation"] == 2
    assert (await planner.source.get(*key))["spec"]["sla"]["ttftMs"] == 1500
    # The service receives the change as an event, and plans with it.
    dp = planner.service.deployments[key]
    deadline = time.monotonic() + WAIT_S
    while dp.config.sla.ttft_ms != 1500:
        assert time.monotonic() < deadline, dp.config.sla
        await asyncio.sleep(0.1)
