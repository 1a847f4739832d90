"""The official `openai` client against the real embedded stack: frontend -> router -> prefill group
(EP2, Ray actors) -> KV transfer -> decode group (EP2) -> tokens, streaming and not.

Also, on the same stack: greedy output equals the single-process reference, cancellation by client
disconnect and by timeout frees every KV block, per-request metrics reach the Redis stream and
/metrics, routing survives a Redis outage and restart, and a dead prefill group is routed around.
The tests share one stack (starting it costs ~25 s) and the last one kills its prefill group.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import replace

import aiohttp
import openai
import pytest
import pytest_asyncio
from moeplane.api.enums import Role
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest, plan_from_deployment
from moeplane.workers.embedded.stack import EmbeddedStack, StackOptions
from moeplane.workers.frontend.app import FrontendConfig
from moeplane.workers.frontend.server import FrontendServer
from moeplane.workers.model import RandomWeights, load_tokenizer
from moeplane.workers.model.reference import reference_greedy
from moeplane.workers.model.weights import full_state_dict
from moeplane.workers.serving.client import WorkerControlClient
from moeplane.workers.supervisor.policy import RestartPolicy

from moeplane.bus.registry import GroupState
from moeplane.bus.request_metrics import read_request_records

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PLAN = plan_from_deployment(load_manifest(DEFAULT_MANIFEST), max_model_len=512)
TOK = load_tokenizer("bytes", PLAN.arch)
NO_EOS = {"ignore_eos": True}
# Bounds on waits for events, far past any wait: a busy machine slows every step.
WAIT_S = 300.0


@pytest.fixture(scope="module")
def weights():
    return full_state_dict(PLAN.arch, RandomWeights(PLAN.arch, PLAN.weights_seed))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(ray_local, weights):
    # The stack lives on the test module's event loop, which only runs inside async tests, so
    # slow synchronous work (the weights above, the reference below) must not stall it for long:
    # the groups' heartbeats run on that loop too.
    s = EmbeddedStack(PLAN, StackOptions(port=0, request_timeout_s=600))
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def client(stack):
    return openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)


async def reference(weights, prompt: str, n: int) -> str:
    """The single-process reference's greedy text, computed off the event loop."""
    ids = await asyncio.to_thread(reference_greedy, PLAN.arch, weights, TOK.encode(prompt), n)
    return TOK.decode(ids)


async def used_blocks(stack: EmbeddedStack, timeout_s: float = WAIT_S) -> dict[str, list[int]]:
    """Per group, used blocks per rank, once they are all zero (or the timeout's numbers)."""
    deadline = time.monotonic() + timeout_s
    while True:
        used = {}
        for g in stack.groups:
            c = WorkerControlClient(g.address)
            used[g.group_id] = [r.num_used_blocks for r in (await c.stats()).ranks]
            await c.close()
        if not any(any(u) for u in used.values()) or time.monotonic() > deadline:
            return used
        await asyncio.sleep(0.1)


async def records_by_id(stack: EmbeddedStack) -> dict:
    assert stack.frontend is not None
    await stack.frontend.writer.flush()
    records, _ = await read_request_records(stack.frontend.redis, PLAN.keys, count=10_000)
    return {r.request_id: r for r in records}


async def records_until(stack: EmbeddedStack, done, what: str) -> dict:
    """The records once `done(records)` holds (the frontend writes a record when it sees the
    request end, which on a busy machine comes a while after the client went away)."""
    deadline = time.monotonic() + WAIT_S
    while not done(records := await records_by_id(stack)):
        assert time.monotonic() < deadline, f"timed out after {WAIT_S:g} s waiting for {what}"
        await asyncio.sleep(0.1)
    return records


async def test_greedy_completion_equals_the_reference(stack, client, weights) -> None:
    prompt = "The quick brown fox"
    out = await client.completions.create(
        model="tiny", prompt=prompt, max_tokens=24, temperature=0, extra_body=NO_EOS
    )
    assert out.choices[0].text == await reference(weights, prompt, 24)
    assert out.choices[0].finish_reason == "length"
    assert out.object == "text_completion" and out.model == "tiny" and out.id.startswith("cmpl-")
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(prompt) + 1, 24)


async def test_streaming_completion_matches_and_reports_usage(stack, client) -> None:
    kwargs = {
        "model": "tiny",
        "prompt": "Mixture of experts",
        "max_tokens": 20,
        "temperature": 0,
        "extra_body": NO_EOS,
    }
    whole = await client.completions.create(**kwargs)
    stream = await client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    texts, finishes, usage = [], [], None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        texts.append(chunk.choices[0].text)
        finishes.append(chunk.choices[0].finish_reason)
    assert "".join(texts) == whole.choices[0].text
    assert finishes[-1] == "length" and set(finishes[:-1]) <= {None}
    assert len(texts) > 3  # really streamed, not one final blob
    assert usage is not None and usage.completion_tokens == 20
    assert usage.total_tokens == usage.prompt_tokens + 20


async def test_chat_streaming_and_not(stack, client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    whole = await client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=16, temperature=0, extra_body=NO_EOS
    )
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens == 16 and whole.choices[0].finish_reason == "length"
    stream = await client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=16, temperature=0, extra_body=NO_EOS, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


async def test_stop_string_cuts_the_output(stack, client) -> None:
    base = await client.completions.create(
        model="tiny", prompt="stop here", max_tokens=32, temperature=0, extra_body=NO_EOS
    )
    text = base.choices[0].text
    # A printable two-character stop string from the middle of the greedy output.
    stop = next(
        text[i : i + 2]
        for i in range(4, len(text) - 2)
        if text[i : i + 2].isprintable() and text[i : i + 2].strip()
    )
    out = await client.completions.create(
        model="tiny", prompt="stop here", max_tokens=32, temperature=0, stop=[stop], extra_body=NO_EOS
    )
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].text == text[: text.index(stop)]


async def test_metrics_reach_redis_and_prometheus(stack, client) -> None:
    out = await client.completions.create(
        model="tiny", prompt="measure me", max_tokens=8, temperature=0, extra_body=NO_EOS
    )
    rec = (await records_by_id(stack))[out.id]
    assert rec.status == "ok" and rec.finish_reason == "length"
    assert (rec.isl_tokens, rec.osl_tokens) == (len("measure me") + 1, 8)
    assert 0 < rec.ttft_ms < rec.e2e_ms and rec.itl_ms is not None and rec.itl_ms > 0
    assert rec.queue_ms is not None and rec.prefill_group == "prefill-0" and rec.decode_group == "decode-0"
    async with aiohttp.ClientSession() as http, http.get(stack.url + "/metrics") as resp:
        text = await resp.text()
    assert 'moeplane_frontend_live_groups{role="prefill"} 1.0' in text
    ttft_count = next(ln for ln in text.splitlines() if ln.startswith("moeplane_frontend_ttft_seconds_count"))
    assert float(ttft_count.split()[-1]) >= 1


async def test_client_disconnect_cancels_and_frees_kv(stack) -> None:
    body = {"model": "tiny", "prompt": "a long answer", "max_tokens": 400, "temperature": 0, **NO_EOS}
    async with aiohttp.ClientSession() as http:
        async with http.post(stack.url + "/v1/completions", json={**body, "stream": True}) as resp:
            assert resp.status == 200
            events = 0
            async for line in resp.content:
                events += line.startswith(b"data: ")
                if events == 3:
                    break
            rid_stream = resp.headers.get("X-Request-Id")
        assert rid_stream is not None
        await used_blocks(stack)  # the streaming one is gone before the next starts
        # Non-streaming: the client goes away once the request is decoding (it holds KV blocks),
        # long before its 400 tokens are done.
        pending = asyncio.create_task(http.post(stack.url + "/v1/completions", json=body))
        deadline = time.monotonic() + WAIT_S
        while not any(any(u) for u in (await used_blocks(stack, timeout_s=0)).values()):
            assert not pending.done(), "the request finished before it was seen decoding"
            assert time.monotonic() < deadline, "the non-streaming request never started decoding"
            await asyncio.sleep(0.05)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
    used = await used_blocks(stack)
    assert not any(any(u) for u in used.values()), used
    records = await records_until(
        stack, lambda rs: sum(r.status == "cancelled" for r in rs.values()) >= 2, "two cancelled records"
    )
    assert records[rid_stream].status == "cancelled" and 0 < records[rid_stream].osl_tokens < 400
    cancelled = [r for r in records.values() if r.status == "cancelled"]
    assert len(cancelled) == 2, cancelled


async def test_request_timeout_is_enforced(stack) -> None:
    assert stack.frontend is not None
    fe = FrontendServer(
        FrontendConfig(served_model="tiny", max_model_len=512, request_timeout_s=0.5),
        stack.redis_url,
        PLAN.keys,
        TOK,
    )
    await fe.start()
    try:
        await fe.cache.wait_for(list({g.role for g in stack.groups}), timeout_s=WAIT_S)
        client = openai.AsyncOpenAI(base_url=fe.url + "/v1", api_key="unused", max_retries=0)
        body = {"model": "tiny", "prompt": "slow", "max_tokens": 480, "temperature": 0, "extra_body": NO_EOS}
        with pytest.raises(openai.APIError, match=r"request timeout of 0\.5 s"):
            stream = await client.completions.create(**body, stream=True)
            async for _ in stream:
                pass
        async with aiohttp.ClientSession() as http:
            raw = {**NO_EOS, **{k: v for k, v in body.items() if k != "extra_body"}}
            async with http.post(fe.url + "/v1/completions", json=raw) as resp:
                # The first token may or may not beat the timeout; either way the status says so.
                assert resp.status == 504, await resp.text()
                assert (await resp.json())["error"]["code"] == "request_timeout"
        await fe.writer.flush()
    finally:
        await fe.stop()
    used = await used_blocks(stack)
    assert not any(any(u) for u in used.values()), used
    statuses = [r.status for r in (await records_by_id(stack)).values()]
    assert statuses.count("timeout") == 2


async def test_routing_survives_a_redis_outage_and_restart(stack, client) -> None:
    assert stack.redis is not None and stack.frontend is not None
    await asyncio.to_thread(stack.redis.stop)
    try:
        await asyncio.sleep(stack.options.registry_ttl_s + 1)  # every TTL would have lapsed
        outs = await asyncio.gather(
            *(
                client.completions.create(model="tiny", prompt=f"outage {i}", max_tokens=4, temperature=0)
                for i in range(3)
            )
        )
        assert all(o.choices[0].finish_reason for o in outs)
        assert stack.frontend.cache.last_error is not None
    finally:
        await asyncio.to_thread(stack.redis.start)  # empty: no persistence
    out = await client.completions.create(model="tiny", prompt="after", max_tokens=4, temperature=0)
    assert out.usage.completion_tokens >= 1
    await stack.frontend.cache.wait_for(list({g.role for g in stack.groups}), timeout_s=WAIT_S)
    # What was measured during the outage was buffered and written once Redis came back.
    ids = set(await records_by_id(stack))
    assert {o.id for o in outs} | {out.id} <= ids


async def test_dead_prefill_group_is_routed_around(stack, client, weights) -> None:
    """Runs last: it kills a rank of the stack's only prefill group, whose supervisor is told to give
    up at once (so the group stays failed instead of coming back)."""
    prefill = stack.supervisors[Role.PREFILL]
    prefill.options = replace(prefill.options, restart=RestartPolicy(max_restarts=0, failed_retry_s=3600))
    g = stack.group("prefill-0")
    os.kill(g.controller.identities[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    while g.state is not GroupState.FAILED:
        assert time.monotonic() < deadline, g.state
        await asyncio.sleep(0.02)
    prompt = "after the crash"
    out = await client.completions.create(
        model="tiny", prompt=prompt, max_tokens=12, temperature=0, extra_body=NO_EOS
    )
    # Retried with the decode group computing the prompt itself; still exactly the reference.
    assert out.choices[0].text == await reference(weights, prompt, 12)
    rec = (await records_by_id(stack))[out.id]
    assert rec.status == "ok" and rec.prefill_group is None and rec.decode_group == "decode-0"
    async with aiohttp.ClientSession() as http, http.get(stack.url + "/health") as resp:
        # Decode serves every request (aggregated), but the prefill role has no live group.
        body = await resp.json()
        assert resp.status == 503
        assert body["reason"].startswith("prefill: no live group (prefill-0 failed: rank 0")
