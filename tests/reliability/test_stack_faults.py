"""Faults, load and security on one real embedded stack: a frontend, one prefill group and two
decode groups (EP2 each, Ray rank actors), a password-protected redis-server, and a shared gRPC
token on every worker service. Everything listens on 127.0.0.1.

In order (later tests kill ranks): AUTH is enforced end to end; the full load run (2,000 requests
at concurrency 64, max_tokens 4: about 45 s here; bench/load.py runs it with a baseline), queued
rather than refused; Redis restarts under load; a decode rank dies in the middle of a stream and
the request resumes on the other decode group; a prefill rank dies while the prefill group holds
requests; and last, neither secret appears in any log captured during the run. After each kill the
group's supervisor restarts it, and the test waits for the pool to be back at full strength.
(tests/reliability/test_group_faults.py runs the faults on a stack with one group per role.)
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import logging
import os
import re
import signal
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import redis
from moeplane.workers.embedded.loadgen import sse_events
from moeplane.workers.embedded.local_redis import LocalRedis
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest, plan_from_deployment
from moeplane.workers.embedded.stack import EmbeddedStack, StackOptions
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.runtime import serving_limits
from moeplane.workers.serving.client import WorkerControlClient

from moeplane.bus.registry import GroupState, WorkerRegistry
from moeplane.bus.request_metrics import read_request_records
from tests.waits import until

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

_spec = importlib.util.spec_from_file_location(
    "moeplane_bench_load", Path(__file__).parents[2] / "bench" / "load.py"
)

assert _spec is not None and _spec.loader is not None
load = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = load  # dataclasses resolve their module by name
_spec.loader.exec_module(load)

PLAN = plan_from_deployment(load_manifest(DEFAULT_MANIFEST), decode_groups=2, max_model_len=512)
TOKEN = f"tok-{uuid.uuid4().hex}"
PASSWORD = f"pw-{uuid.uuid4().hex}"
LOAD_REQUESTS, LOAD_CONCURRENCY = 2000, 64
# Bound on every wait for an event, and the stack's request and queue timeouts: far beyond any
# wait on a busy machine, so a slow machine makes the tests slower, never failed.
WAIT_S = 600.0


class Captured:
    """Every log record of this process (DEBUG for moeplane, INFO for the rest), formatted with
    its traceback, plus stdout/stderr written through Python."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.handler.setLevel(logging.DEBUG)

    def __enter__(self) -> Captured:
        root, ours = logging.getLogger(), logging.getLogger("moeplane")
        self._levels = root.level, ours.level
        root.addHandler(self.handler)
        root.setLevel(min(root.level, logging.INFO))
        ours.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        root, ours = logging.getLogger(), logging.getLogger("moeplane")
        root.removeHandler(self.handler)
        root.setLevel(self._levels[0])
        ours.setLevel(self._levels[1])


@pytest.fixture(scope="module")
def captured():
    with Captured() as c:
        yield c


@pytest.fixture(scope="module")
def secured_redis():
    server = LocalRedis(password=PASSWORD).start()
    yield server
    server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(ray_local, captured, secured_redis):
    s = EmbeddedStack(
        PLAN,
        StackOptions(
            port=0, request_timeout_s=WAIT_S, redis_url=secured_redis.url, cpus_per_rank=0.25,
            serving=replace(serving_limits(PLAN.serving, WAIT_S), queue_timeout_s=WAIT_S),
        ),
    )
    s.security = GrpcSecurity(token=TOKEN)
    await s.start()
    yield s
    await s.stop()


def addresses(stack: EmbeddedStack) -> list[str]:
    return [g.address for g in stack.groups]


async def full_strength(stack: EmbeddedStack, restarted: str, restarts: int) -> None:
    """The killed group is live again, restarted once more, and every group is live."""
    g = stack.group(restarted)
    await until(lambda: g.restarts >= restarts and all(x.state is GroupState.LIVE for x in stack.groups),
                f"{restarted} restarted and every group live", WAIT_S)


async def post(url: str, body: dict, timeout_s: float = WAIT_S) -> tuple[int, dict]:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(url + "/v1/completions", json=body) as resp,
    ):
        return resp.status, await resp.json()


async def test_redis_auth_and_grpc_token_are_enforced(stack, secured_redis) -> None:
    # Redis: refused without the password, yet the stack's heartbeats and frontend got in.
    anonymous = redis.Redis(host="127.0.0.1", port=secured_redis.port, socket_timeout=5)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    assert stack.frontend is not None and stack.frontend.cache.last_error is None
    assert {g.group_id for g in stack.frontend.cache.groups()} == {"prefill-0", "decode-0", "decode-1"}
    # Worker control: UNAUTHENTICATED without the token or with a wrong one.
    address = stack.groups[0].address
    for security in (GrpcSecurity(), GrpcSecurity(token="guess")):
        client = WorkerControlClient(address, security)
        with pytest.raises(Exception, match="UNAUTHENTICATED"):
            await client.stats()
        await client.close()
    status, body = await post(stack.url, {"model": "tiny", "prompt": "auth", "max_tokens": 4})
    assert status == 200 and body["usage"]["completion_tokens"] >= 1


async def test_load_is_queued_never_refused_and_leaks_nothing(stack, secured_redis) -> None:
    assert secured_redis._proc is not None
    pids = {"frontend": os.getpid(), "redis": secured_redis._proc.pid, **load.group_rank_pids(stack)}
    assert len(pids) == 2 + 2 * 3, pids  # 3 groups of EP2
    # Warm-up, so allocator pools and caches are in place before the first RSS sample.
    await load.run_load(stack.url, "tiny", 64, 16, 4, {}, "warm-up")
    run = await load.run_load(stack.url, "tiny", LOAD_REQUESTS, LOAD_CONCURRENCY, 4, pids)
    assert len(run.outcomes) == LOAD_REQUESTS
    assert not run.errors, run.errors[:5]
    assert run.ok == LOAD_REQUESTS, (run.ok, run.shed[:3])  # queued, never refused
    used = await load.wait_no_blocks(addresses(stack), stack.security)
    assert not any(any(u) for u in used.values()), used
    growth = run.rss_growth()
    assert set(growth) == set(pids) and all(g < load.RSS_GROWTH_LIMIT for g in growth.values()), (
        growth,
        run.rss_kb,
    )
    s = run.summary()
    print(
        f"\nload {LOAD_REQUESTS} @ {LOAD_CONCURRENCY}: {s['requests_per_s']:.1f} req/s, e2e p50 "
        f"{s['e2e_p50_ms']:.0f} ms p99 {s['e2e_p99_ms']:.0f} ms, 503s {len(run.shed)}, "
        f"RSS growth { ({k: round(v * 100, 1) for k, v in growth.items()}) }"
    )


async def test_redis_restart_under_load(stack, secured_redis) -> None:
    assert stack.frontend is not None
    registry = WorkerRegistry(stack.frontend.redis, PLAN.keys, ttl_s=stack.options.registry_ttl_s)
    load_task = asyncio.create_task(load.run_load(stack.url, "tiny", 80, 8, 6, {}, "during-restart"))
    # The restart lands while requests are on the groups (waited for, however busy the machine).
    inflight = stack.frontend.pipeline.inflight
    await until(lambda: any(inflight.reservations.values()), "requests in flight", WAIT_S)
    restarted_at = time.time()
    await asyncio.to_thread(secured_redis.restart, 1.0)  # empty afterwards: no persistence
    run = await asyncio.wait_for(load_task, WAIT_S)
    assert not run.errors, run.errors[:5]
    assert run.ok >= 70, (run.ok, len(run.shed))
    # Heartbeats resume: every group registers again in the empty Redis.
    deadline = time.monotonic() + WAIT_S
    while {g.group_id for g in await registry.live_groups()} != {"prefill-0", "decode-0", "decode-1"}:
        assert time.monotonic() < deadline, "heartbeats did not resume after the restart"
        await asyncio.sleep(0.2)
    # Metrics resume: requests served after the restart reach the new Redis's stream.
    status, body = await post(stack.url, {"model": "tiny", "prompt": "after restart", "max_tokens": 4})
    assert status == 200
    await stack.frontend.writer.flush()
    records, _ = await read_request_records(stack.frontend.redis, PLAN.keys, count=10_000)
    ids = {r.request_id for r in records}
    assert body["id"] in ids and all(
        r.arrived_at_s >= restarted_at - 5 for r in records if r.request_id == body["id"]
    )
    assert stack.frontend.cache.last_error is None


async def test_decode_group_dies_mid_stream_and_the_request_resumes(stack) -> None:
    body = {"model": "tiny", "prompt": "resume me", "max_tokens": 120, "temperature": 0, "ignore_eos": True}
    status, whole = await post(stack.url, body)
    assert status == 200
    texts: list[str] = []
    errors: list[dict] = []
    killed = None
    timeout = aiohttp.ClientTimeout(total=WAIT_S)
    streaming = {**body, "stream": True}
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(stack.url + "/v1/completions", json=streaming) as resp,
    ):
        assert resp.status == 200
        async for event in sse_events(resp.content):
            if "error" in event:
                errors.append(event["error"])
                continue
            texts.append(event["choices"][0]["text"])
            if len(texts) == 5 and killed is None:
                # The decode group streaming this request: the one holding blocks right now.
                used = await load.used_blocks(addresses(stack), stack.security)
                busy = [g for g in stack.groups if g.role.value == "decode" and any(used[g.address])]
                assert len(busy) == 1, used
                killed = busy[0].group_id
                restarts = busy[0].restarts
                os.kill(busy[0].controller.identities[0].pid, signal.SIGKILL)
    assert killed is not None and not errors, errors
    # Re-prefilled with the tokens already emitted, on the surviving decode group: the client saw
    # one uninterrupted stream, identical to the undisturbed greedy run.
    assert "".join(texts) == whole["choices"][0]["text"]
    await full_strength(stack, killed, restarts + 1)
    used = await load.wait_no_blocks(addresses(stack), stack.security)
    assert not any(any(u) for u in used.values()), used
    async with aiohttp.ClientSession() as http, http.get(stack.url + "/metrics") as resp:
        # At least this migration (a busy machine may add others: earlier tests' slow groups).
        text = await resp.text()
        retried = re.search(r'^moeplane_frontend_retries_total\{stage="decode"\} (\S+)$', text, re.M)
        assert retried is not None and float(retried.group(1)) >= 1.0


async def test_prefill_group_dies_mid_request(stack) -> None:
    prompt = "a long prompt to keep the prefill busy " * 10
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    prefill = stack.group("prefill-0")
    restarts = prefill.restarts
    tasks = [asyncio.create_task(post(stack.url, {**body, "prompt": f"{i} {prompt}"})) for i in range(4)]
    # Really in the middle of requests: the prefill group holds some when its rank dies.
    await until(lambda: prefill.controller.num_requests > 0, "prefills in flight", WAIT_S)
    os.kill(prefill.controller.identities[1].pid, signal.SIGKILL)
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)  # never hangs
    # Every one retried: on the decode groups computing the prompt themselves, or on the restarted
    # prefill group.
    for status, answer in results:
        assert status == 200 and answer["usage"]["completion_tokens"] == 8, (status, answer)
    await full_strength(stack, "prefill-0", restarts + 1)
    used = await load.wait_no_blocks(addresses(stack), stack.security)
    assert not any(any(u) for u in used.values()), used


async def test_secrets_never_appear_in_logs(stack, captured, secured_redis) -> None:
    """Runs last, over everything the module logged, plus redis-server's and Ray's log files."""
    await stack.frontend.writer.flush()  # type: ignore[union-attr]
    texts = {"python logging": captured.buffer.getvalue()}
    assert len(texts["python logging"]) > 1000  # the run really logged (warnings from the faults)
    for path in Path(secured_redis._dir).rglob("*"):
        if path.is_file() and path.suffix in (".log", ".txt", ""):
            texts[str(path)] = path.read_text(errors="replace")
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    for path in session.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            texts[str(path)] = path.read_text(errors="replace")
    assert len(texts) > 3
    leaks = [
        (where, secret[:6]) for where, text in texts.items() for secret in (TOKEN, PASSWORD) if secret in text
    ]
    assert not leaks, leaks
    # The grep would have found them: the secrets are really in use by this stack.
    assert stack.security.call_metadata() and PASSWORD in secured_redis.url
