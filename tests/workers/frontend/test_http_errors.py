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
X = {"model": "tiny", "prompt": "x"}
CASES = [
    (CMPL, b"{not json", 400, None, "invalid_json"),
    (CMPL, b"[1, 2]", 400, None, "invalid_json"),
    (CMPL, b"\xff\xfe", 400, None, "invalid_json"),
    (CMPL, b"{}", 400, "prompt", "missing_required_parameter"),
    (CMPL, {"model": "tiny"}, 400, "prompt", "missing_required_parameter"),
    (CMPL, {"model": "tiny", "prompt": ""}, 400, "prompt", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": []}, 400, "prompt", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": ["a", 3]}, 400, "prompt", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": [1, 2, 300]}, 400, "prompt", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": [[1, 2], [3, 999]]}, 400, "prompt[1]", "invalid_value"),
    (CMPL, {**X, "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    (CMPL, {**X, "max_tokens": "5"}, 400, "max_tokens", "invalid_value"),
    (CMPL, {**X, "max_tokens": 5000}, 400, "max_tokens", "context_length_exceeded"),
    (CMPL, {"model": "tiny", "prompt": "x" * 600}, 400, "prompt", "context_length_exceeded"),
    (CMPL, {**X, "temperature": 2.5}, 400, "temperature", "invalid_value"),
    (CMPL, {**X, "top_p": 0}, 400, "top_p", "invalid_value"),
    (CMPL, {**X, "top_k": -2}, 400, "top_k", "invalid_value"),
    (CMPL, {**X, "min_p": 1.5}, 400, "min_p", "invalid_value"),
    (CMPL, {**X, "repetition_penalty": 0}, 400, "repetition_penalty", "invalid_value"),
    (CMPL, {**X, "presence_penalty": 3}, 400, "presence_penalty", "invalid_value"),
    (CMPL, {**X, "frequency_penalty": -2.5}, 400, "frequency_penalty", "invalid_value"),
    (CMPL, {**X, "n": 0}, 400, "n", "invalid_value"),
    (CMPL, {**X, "n": 129}, 400, "n", "invalid_value"),
    (CMPL, {"model": "tiny", "prompt": ["a"] * 3, "n": 100}, 400, "n", "invalid_value"),
    (CMPL, {**X, "stream": "yes"}, 400, "stream", "invalid_value"),
    (CMPL, {**X, "stop": ["a"] * 33}, 400, "stop", "invalid_value"),
    (CMPL, {**X, "stop": [""]}, 400, "stop", "invalid_value"),
    (CMPL, {**X, "stop_token_ids": [999]}, 400, "stop_token_ids", "invalid_value"),
    (CMPL, {**X, "stop_token_ids": ["a"]}, 400, "stop_token_ids", "invalid_value"),
    (CMPL, {**X, "allowed_token_ids": [-1]}, 400, "allowed_token_ids", "invalid_value"),
    (CMPL, {**X, "logit_bias": {"abc": 1}}, 400, "logit_bias", "invalid_value"),
    (CMPL, {**X, "logit_bias": {"300": 1}}, 400, "logit_bias", "invalid_value"),
    (CMPL, {**X, "logit_bias": {"3": 101}}, 400, "logit_bias", "invalid_value"),
    (CMPL, {**X, "seed": 2**64}, 400, "seed", "invalid_value"),
    (CMPL, {**X, "seed": 1.5}, 400, "seed", "invalid_value"),
    (CMPL, {**X, "min_tokens": 20, "max_tokens": 10}, 400, "min_tokens", "invalid_value"),
    (CMPL, {**X, "logprobs": 21}, 400, "logprobs", "invalid_value"),
    (CMPL, {**X, "logprobs": -1}, 400, "logprobs", "invalid_value"),
    (CMPL, {**X, "stream": True, "prompt_logprobs": 1}, 400, "prompt_logprobs", "invalid_value"),
    (CMPL, {**X, "stream_options": {"include_usage": True}}, 400, "stream_options", "invalid_value"),
    (CMPL, {**X, "best_of": 2}, 400, "best_of", "unsupported_parameter"),
    (CMPL, {**X, "suffix": "tail"}, 400, "suffix", "unsupported_parameter"),
    (CMPL, {**X, "use_beam_search": True}, 400, "use_beam_search", "unsupported_parameter"),
    (CMPL, {**X, "guided_json": {"type": "object"}}, 400, "guided_json", "unsupported_parameter"),
    (CMPL, {**X, "priority": 1}, 400, "priority", "unsupported_parameter"),
    (CMPL, {**X, "response_format": {"type": "json_object"}}, 400, "response_format",
     "unsupported_parameter"),
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
    (CHAT, {**OK_CHAT, "top_logprobs": 2}, 400, "top_logprobs", "invalid_value"),
    (CHAT, {**OK_CHAT, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs", "invalid_value"),
    (CHAT, {**OK_CHAT, "logprobs": 1}, 400, "logprobs", "invalid_value"),
    (CHAT, {**OK_CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools",
     "unsupported_parameter"),
    (CHAT, {**OK_CHAT, "tool_choice": "required"}, 400, "tool_choice", "unsupported_parameter"),
    (CHAT, {**OK_CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 400,
     "response_format", "unsupported_parameter"),
    (CHAT, {**OK_CHAT, "add_generation_prompt": 1}, 400, "add_generation_prompt", "invalid_value"),
    (CHAT, {**OK_CHAT, "chat_template_kwargs": "x"}, 400, "chat_template_kwargs", "invalid_value"),
    (CHAT, {**OK_CHAT, "chat_template_kwargs": {"messages": []}}, 400, "chat_template_kwargs",
     "invalid_value"),
    (CHAT, {**OK_CHAT, "continue_final_message": True}, 400, "continue_final_message",
     "unsupported_parameter"),
    (CHAT, {**OK_CHAT, "chat_template": "{{ x }}"}, 400, "chat_template", "unsupported_parameter"),
    ("/tokenize", {"model": "tiny"}, 400, "prompt", "invalid_value"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 400, "prompt",
     "invalid_value"),
    ("/detokenize", {"tokens": [1, 999]}, 400, "tokens", "invalid_value"),
    ("/detokenize", {"tokens": "abc"}, 400, "tokens", "invalid_value"),
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
    assert err["param"] == param and err["code"] == code
    assert err["type"] in ("invalid_request_error", "not_found_error")
    if param is not None:
        assert param.split("[")[0].split(".")[0] in err["message"]
    # One clean sentence: no repeated "(got ...)", none of pydantic's wording.
    assert err["message"].count("(got") <= 1, err["message"]
    assert "should" not in err["message"] and "validation" not in err["message"], err["message"]
    assert resp.headers["X-Request-Id"]  # every error carries the request id


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


async def test_request_ids_are_echoed_and_checked(frontend) -> None:
    _, session = frontend
    async with session.post(CMPL, json={"model": "tiny"}, headers={"X-Request-Id": "req-1"}) as resp:
        assert resp.status == 400 and resp.headers["X-Request-Id"] == "req-1"
    async with session.get("/v1/nothing", headers={"X-Request-Id": "req-2"}) as resp:
        assert resp.status == 404 and resp.headers["X-Request-Id"] == "req-2"
    async with session.post(CMPL, json={"model": "tiny"}) as resp:
        assert resp.headers["X-Request-Id"].startswith("cmpl-")  # the response's own id
    async with session.post(CMPL, json={"model": "tiny"}, headers={"X-Request-Id": "x" * 200}) as resp:
        err = (await resp.json())["error"]
        assert resp.status == 400 and err["code"] == "invalid_request_id" and resp.headers["X-Request-Id"]


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
    card = body["data"][0]
    assert (card["owned_by"], card["root"], card["max_model_len"]) == ("moeplane", "tiny", 512)
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
    # Responses by status code, 4xx included, per route: this test's own requests add one each.
    bad_400 = 'moeplane_frontend_http_responses_total{code="400",route="/v1/completions"}'
    unmatched_404 = 'moeplane_frontend_http_responses_total{code="404",route="unmatched"}'
    assert _sample(text, bad_400) >= 1 and _sample(text, unmatched_404) >= 1  # the earlier tests'
    async with session.post(CMPL, json={"model": "tiny"}) as resp:
        assert resp.status == 400
    async with session.get("/v1/nothing") as resp:
        assert resp.status == 404
    async with session.get("/metrics") as resp:
        after = await resp.text()
    assert _sample(after, bad_400) == _sample(text, bad_400) + 1
    assert _sample(after, unmatched_404) == _sample(text, unmatched_404) + 1
    assert 'moeplane_frontend_http_responses_total{code="503",route="/v1/chat/completions"} 1.0' in text
    # vLLM's names for the same quantities, with its label.
    assert 'vllm:num_requests_running{model_name="tiny"} 0.0' in text
    assert 'vllm:kv_cache_usage_perc{model_name="tiny"} 0.0' in text
    assert 'vllm:e2e_request_latency_seconds_count{model_name="tiny"} 2.0' in text
    assert 'vllm:request_prompt_tokens_bucket{le="10.0",model_name="tiny"} 1.0' in text


def _sample(exposition: str, series: str) -> float:
    """The value of one series (name and labels, as exposed) in a Prometheus text exposition."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} is not exposed")
