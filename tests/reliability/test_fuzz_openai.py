"""Fuzzed OpenAI request bodies against the real aiohttp frontend over loopback HTTP: never a 500.

The registry is empty (a real redis-server), so a body that passes validation meets the real
"no capacity" path. Every answer carries X-Request-Id and is one of: 400 with an OpenAI error body
whose `param` names the field (for a JSON object body), with a code and one clean message, 404 for
an unknown model, 503 with Retry-After, or 200 from /tokenize and /detokenize. The frontend runs
on its own event-loop thread so hypothesis can drive it from a plain synchronous test.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moeplane.workers.frontend.app import FrontendConfig
from moeplane.workers.frontend.server import FrontendServer
from moeplane.workers.model.tokenizer import ByteTokenizer
from moeplane.workers.serving.limits import ServingLimits
from moeplane.workers.serving.loop import LoopThread

from moeplane.bus.keys import DeploymentKeys

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**66), max_value=2**66)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
# Plausible values per field, mixed with anything at all, so fuzzing reaches deep validation paths.
NUMBER = st.integers(min_value=-5, max_value=5000) | st.floats(min_value=-3, max_value=3) | JSON
FIELDS = {
    "model": st.sampled_from(["tiny", "gpt-4", ""]) | JSON,
    "prompt": st.text(max_size=40)
    | st.lists(st.integers(min_value=-2, max_value=300), max_size=5)
    | st.lists(st.text(max_size=8) | st.lists(st.integers(min_value=-2, max_value=300), max_size=3),
               max_size=3)
    | JSON,
    "tokens": st.lists(st.integers(min_value=-2, max_value=300), max_size=5) | JSON,
    "messages": st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "role": st.sampled_from(["user", "system", "assistant", "tool", "wizard"]) | JSON,
                "content": st.text(max_size=20) | JSON,
                "name": JSON,
            },
        ),
        max_size=3,
    )
    | JSON,
    "max_tokens": NUMBER,
    "max_completion_tokens": NUMBER,
    "temperature": NUMBER,
    "top_p": NUMBER,
    "n": NUMBER,
    "seed": NUMBER,
    "stream": st.booleans() | JSON,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | JSON}) | JSON,
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=6) | JSON,
    "ignore_eos": st.booleans() | JSON,
    "logprobs": st.booleans() | st.integers(min_value=-2, max_value=25) | JSON,
    "top_logprobs": st.integers(min_value=-2, max_value=25) | JSON,
    "prompt_logprobs": st.integers(min_value=-2, max_value=25) | JSON,
    "echo": st.booleans() | JSON,
    "user": JSON,
    # vLLM's sampling fields and the OpenAI ones this server implements now
    "top_k": NUMBER,
    "min_p": NUMBER,
    "presence_penalty": NUMBER,
    "frequency_penalty": NUMBER,
    "repetition_penalty": NUMBER,
    "min_tokens": NUMBER,
    "logit_bias": st.dictionaries(st.text(max_size=4) | st.integers(0, 400).map(str), NUMBER, max_size=3)
    | JSON,
    "stop_token_ids": st.lists(st.integers(min_value=-2, max_value=400), max_size=3) | JSON,
    "allowed_token_ids": st.lists(st.integers(min_value=-2, max_value=400), max_size=3) | JSON,
    "include_stop_str_in_output": st.booleans() | JSON,
    "skip_special_tokens": st.booleans() | JSON,
    "truncate_prompt_tokens": NUMBER,
    "return_tokens_as_token_ids": st.booleans() | JSON,
    "request_id": st.text(max_size=12) | JSON,
    "add_special_tokens": st.booleans() | JSON,
    # known but unsupported (a 400 naming them unless they carry their no-op value), and unknown ones
    "best_of": NUMBER,
    "suffix": JSON,
    "use_beam_search": JSON,
    "priority": NUMBER,
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema"])}
    )
    | JSON,
    "tools": JSON,
    "tool_choice": st.sampled_from(["none", "auto", "required"]) | JSON,
    "add_generation_prompt": JSON,
    "guided_json": JSON,
    "metadata": JSON,
    "store": JSON,
}
BODY = st.fixed_dictionaries({}, optional=FIELDS) | st.dictionaries(st.text(max_size=10), JSON, max_size=4)
PATHS = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]


@pytest.fixture(scope="module")
def frontend(redis_server) -> Iterator[int]:
    loop = LoopThread("fuzz-frontend")
    keys = DeploymentKeys("test", f"fuzz-{uuid.uuid4().hex[:8]}")
    # No group is registered: a valid request waits its (short) turn in the queue, then gets 503.
    server = FrontendServer(
        FrontendConfig(served_model="tiny", max_model_len=512), redis_server.url, keys, ByteTokenizer(),
        limits=ServingLimits(max_model_len=512, queue_timeout_s=0.05),
    )
    url = loop.run(server.start())
    yield int(url.rsplit(":", 1)[1])
    loop.run(server.stop())
    loop.close()


def post(port: int, path: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def check(port: int, path: str, data: bytes, is_object: bool) -> None:
    status, headers, raw = post(port, path, data)
    assert headers.get("x-request-id"), (status, raw[:300])
    if status == 200:  # /tokenize and /detokenize need no worker group
        assert path in ("/tokenize", "/detokenize"), (data[:300], raw[:300])
        assert isinstance(json.loads(raw), dict)
        return
    assert status in (400, 404, 503), (status, data[:300], raw[:300])
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"].strip() and err["code"]
    if status == 400 and is_object:
        assert err["param"], (data[:300], err)
        assert err["param"].split("[")[0].split(".")[0] in err["message"], err
        # One clean sentence: no repeated "(got ...)", none of pydantic's wording.
        assert err["message"].count("(got") <= 1 and "should" not in err["message"], err
    if status == 404:
        assert err["param"] == "model"
    if status == 503:
        assert int(headers["retry-after"]) >= 1


@FUZZ
@given(path=st.sampled_from(PATHS), body=BODY)
def test_fuzzed_json_bodies_never_500(frontend: int, path: str, body: dict) -> None:
    check(frontend, path, json.dumps(body).encode(), is_object=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(PATHS),
    data=st.binary(max_size=64) | JSON.map(lambda v: json.dumps(v).encode()),
)
def test_fuzzed_raw_bytes_never_500(frontend: int, path: str, data: bytes) -> None:
    try:
        is_object = isinstance(json.loads(data), dict)
    except ValueError:
        is_object = False
    check(frontend, path, data, is_object)
