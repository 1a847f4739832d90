"""Every malformed request is a 400 with an OpenAI error body naming the field; never a 500.

A real frontend over loopback HTTP and a real redis-server whose registry is empty, so requests
that pass validation meet the real "no capacity" path: 503 with Retry-After.
"""

from __future__ import annotations

import json
import uuid

import aiohttp
import pytest
import pytest_asyncio
from moeplane.workers.frontend.app import FrontendConfig
from moeplane.workers.frontend.server import FrontendServer
from moeplane.workers.model.tokenizer import ByteTokenizer
from moeplane.workers.serving.limits import ServingLimits

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.request_metrics import read_request_records

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

CMPL, CHAT = "/v1/completions", "/v1/chat/completions"
OK_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}

# (path, body, status, param, code)
CASES = [
    (CMPL, b"{not json", 400, None, "invalid_json"),
    (CMPL, b"[1, 2]", 400, None, "invalid_json"),
    (CMPL, b"\xff\xfe", 400, None, "invalid_json"),
    (CMPL, b"{}", 400, "model", "missing_required_parameter"),
    (CMPL, {"model": "tiny"}, 400, "prompt", "missing_required_parameter"),
    (CMPL, {"model": "tiny", "prompt": ""}, 400, "prompt", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": ["a", "b"]}, 400, "prompt", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": [1, 2, 300]}, 400, "prompt", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": "x", "max_tokens": "5"}, 400, "max_tokens", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": "x", "max_tokens": 5000}, 400, "max_tokens",
     "context_length_exceeded"),
    (CMPL, {"model": "tiny", "prompt": "x" * 600}, 400, "prompt", "context_length_exceeded"),
    (CMPL, {"model": "tiny", "prompt": "x", "temperature": 2.5}, 400, "temperature", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": "x", "top_p": 0}, 400, "top_p", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": "x", "n": 2}, 400, "n", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": "x", "stream": "yes"}, 400, "stream", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": "x", "stop": [""]}, 400, "stop", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": "x", "seed": -1}, 400, "seed", None),
    (CMPL, {"model": "tiny", "prompt": "x", "echo": True}, 400, "echo", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": "x", "presence_penalty": 1}, 400, "presence_penalty", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": "x", "stream_options": {"include_usage": True}}, 400,
     "stream_options", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": "x", "bogus": 1}, 400, "bogus", "unrecognized_argument"),
    (CMPL, {"model": "gpt-4", "prompt": "x"}, 404, "model", "model_not_found"),
    (CHAT, {"model": "tiny"}, 400, "messages", "missing_required_parameter"),
    (CHAT, {"model": "tiny", "messages": []}, 400, "messages", "invalid_value"),
    (CHAT, {"model": "tiny", "messages": "hi"}, 400, "messages", "invalid_value"),
    (CHAT, {"model": "tiny", "messages": [{"content": "hi"}]}, 400, "messages[0].role",
     "missing_required_parameter"),
    (CHAT, {"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role",
     "invalid_value"),
    (CHAT, {"model": "tiny", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": 7}]},
     400, "messages[1].content", "invalid_value"),
    (CHAT, {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content", "invalid_value"),
    (CHAT, {**OK_CHAT, "max_completion_tokens": -3}, 400, "max_completion_tokens", "invalid_value"),
    (CHAT, {**OK_CHAT, "logprobs": True}, 400, "logprobs", "invalid_value"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def frontend(redis_server):
    keys = DeploymentKeys("test", f"http-{uuid.uuid4().hex[:8]}")
    # No group is registered: a valid request waits its (short) turn in the queue, then gets 503.
    server = FrontendServer(
        FrontendConfig(served_model="tiny", max_model_len=512), redis_server.url, keys, ByteTokenizer(),
        limits=ServingLimits(max_model_len=512, queue_timeout_s=0.2),
    )
    await server.start()
    async with aiohttp.ClientSession(server.url) as session:
        yield server, session
    await server.stop()


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), CASES)
async def test_malformed_request_is_an_openai_error(frontend, path, body, status, param, code) -> None:
    _, session = frontend
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(path, data=data, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == status, await resp.text()
        err = (await resp.json())["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    assert err["type"] in ("invalid_request_error", "not_found_error")
    if param is not None:
        assert param.split("[")[0].split(".")[0] in err["message"]


async def test_valid_request_without_capacity_is_503_with_retry_after(frontend) -> None:
    server, session = frontend
    for path, body in ((CMPL, {"model": "tiny", "prompt": "hello"}), (CHAT, {**OK_CHAT, "stream": True})):
        async with session.post(path, json=body) as resp:
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) >= 1
            err = (await resp.json())["error"]
            assert err["type"] == "overloaded_error" and "no live decode group" in err["message"]
    await server.writer.flush()
    records, _ = await read_request_records(server.redis, server.registry.keys)
    assert [r.status for r in records] == ["rejected", "rejected"]
    assert records[0].isl_tokens == 6 and records[0].ttft_ms is None  # BOS + "hello"


async def test_unknown_routes_and_methods_get_openai_bodies(frontend) -> None:
    _, session = frontend
    async with session.get("/v1/nothing") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "404"
    async with session.get(CMPL) as resp:
        assert resp.status == 405 and "error" in await resp.json()


async def test_models_health_and_metrics(frontend) -> None:
    _, session = frontend
    async with session.get("/v1/models") as resp:
        body = await resp.json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["tiny"]
    async with session.get("/health") as resp:
        assert resp.status == 503  # no decode group registered
        health = await resp.json()
        assert health["groups"] == {"prefill": 0, "decode": 0} and health["status"] == "unavailable"
        assert health["reason"] == "decode: no live group (none registered)"
    async with session.get("/metrics") as resp:
        text = await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
    assert 'moeplane_frontend_requests_total{endpoint="completions",model="tiny",status="rejected"}' in text
    assert 'moeplane_frontend_live_groups{role="decode"} 0.0' in text
    # Responses by status code, 4xx included, per route.
    bad = sum(1 for path, _, status, _, _ in CASES if path == CMPL and status == 400)
    assert f'moeplane_frontend_http_responses_total{{code="400",route="/v1/completions"}} {bad}.0' in text
    assert 'moeplane_frontend_http_responses_total{code="404",route="unmatched"} 1.0' in text
    assert 'moeplane_frontend_http_responses_total{code="503",route="/v1/chat/completions"} 1.0' in text
    # vLLM's names for the same quantities, with its label.
    assert 'vllm:num_requests_running{model_name="tiny"} 0.0' in text
    assert 'vllm:kv_cache_usage_perc{model_name="tiny"} 0.0' in text
    assert 'vllm:e2e_request_latency_seconds_count{model_name="tiny"} 2.0' in text
    assert 'vllm:request_prompt_tokens_bucket{le="10.0",model_name="tiny"} 1.0' in text
