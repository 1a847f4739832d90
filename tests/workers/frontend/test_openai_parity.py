"""OpenAI API parity with vLLM's server, with the official `openai` client against the real embedded
stack (frontend -> prefill group EP2 -> KV transfer -> decode group EP2, tiny model on the CPU).

Covers: logprobs on completions and chat (equal to the single-process reference's log-softmax),
echo with prompt logprobs, n > 1 and lists of prompts (prompt-major indices, streams interleaved),
seeds, penalties against a plain reference, top_k/min_p, min_tokens, stop_token_ids,
include_stop_str_in_output, skip_special_tokens, unknown fields, /tokenize and /detokenize,
/v1/models, X-Request-Id, API keys, and the aiperf-style harness in bench/.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import aiohttp
import openai
import pytest
import pytest_asyncio
import torch
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest, plan_from_deployment
from moeplane.workers.embedded.stack import EmbeddedStack, StackOptions
from moeplane.workers.frontend.app import FrontendConfig
from moeplane.workers.frontend.server import FrontendServer
from moeplane.workers.model import RandomWeights, load_tokenizer
from moeplane.workers.model.reference import reference_logits
from moeplane.workers.model.weights import full_state_dict

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PLAN = plan_from_deployment(load_manifest(DEFAULT_MANIFEST), max_model_len=512)
TOK = load_tokenizer("bytes", PLAN.arch)
# Bound on waits for events, far past any wait: a busy machine slows every step.
WAIT_S = 300.0
NO_EOS = {"ignore_eos": True}
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def weights():
    return full_state_dict(PLAN.arch, RandomWeights(PLAN.arch, PLAN.weights_seed))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(ray_local, weights):
    s = EmbeddedStack(PLAN, StackOptions(port=0, request_timeout_s=600))
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def client(stack):
    return openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)


async def ref_logprobs(weights, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] log-softmax of the reference at every position (off the event loop)."""
    logits = await asyncio.to_thread(reference_logits, PLAN.arch, weights, torch.tensor(ids))
    return torch.log_softmax(logits, dim=-1)


def ref_penalties(x: list[float], prompt: list[int], output: list[int], rep: float, freq: float, pres: float):
    out = list(x)
    for t in range(len(out)):
        if t in prompt or t in output:
            out[t] = out[t] / rep if out[t] > 0 else out[t] * rep
        n = output.count(t)
        out[t] -= freq * n + (pres if n else 0.0)
    return out


async def token_ids(client, **kwargs) -> list[int]:
    """The generated ids, from logprobs with `return_tokens_as_token_ids` (vLLM)."""
    extra = {**kwargs.pop("extra_body", {}), "return_tokens_as_token_ids": True}
    out = await client.completions.create(**kwargs, logprobs=0, extra_body=extra)
    return [int(t.removeprefix("token_id:")) for t in out.choices[0].logprobs.tokens]


async def tokenize(stack, **body) -> list[int]:
    async with aiohttp.ClientSession() as http, http.post(stack.url + "/tokenize", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["tokens"]


# ---- logprobs ---------------------------------------------------------------------------------------
async def test_completion_logprobs_equal_the_reference_streaming_and_not(stack, client, weights) -> None:
    prompt = "Logprobs, please"
    kwargs = {
        "model": "tiny",
        "prompt": prompt,
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": 2,
        "extra_body": NO_EOS,
    }
    out = await client.completions.create(**kwargs)
    lp = out.choices[0].logprobs
    ids = TOK.encode(prompt)
    gen = await token_ids(client, model="tiny", prompt=prompt, max_tokens=8, temperature=0, extra_body=NO_EOS)
    ref = await ref_logprobs(weights, ids + gen)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    for i, token_lp in enumerate(lp.token_logprobs):
        row = ref[len(ids) - 1 + i]
        assert token_lp == pytest.approx(float(row.max()), abs=1e-3)  # greedy: the most likely
        top = lp.top_logprobs[i]
        assert 1 <= len(top) <= 3 and max(top.values()) == pytest.approx(float(row.max()), abs=1e-3)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    stream = await client.completions.create(**kwargs, stream=True)
    tokens, offsets, values = [], [], []
    async for chunk in stream:
        c = chunk.choices[0]
        if c.logprobs is not None:
            tokens += c.logprobs.tokens
            offsets += c.logprobs.text_offset
            values += c.logprobs.token_logprobs
    assert (tokens, offsets) == (lp.tokens, lp.text_offset)
    assert values == pytest.approx(lp.token_logprobs, abs=1e-5)


async def test_chat_logprobs_with_top_logprobs_and_bytes(stack, client, weights) -> None:
    messages = [{"role": "user", "content": "Hi there"}]
    kwargs = {
        "model": "tiny",
        "messages": messages,
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
        "extra_body": NO_EOS,
    }
    out = await client.chat.completions.create(**kwargs)
    content = out.choices[0].logprobs.content
    assert len(content) == 6
    ids = await tokenize(stack, messages=messages)
    assert len(ids) == out.usage.prompt_tokens  # /tokenize renders the chat template as serving does
    named = await client.chat.completions.create(
        **{**kwargs, "extra_body": {"return_tokens_as_token_ids": True, **NO_EOS}}
    )
    gen = [int(i.token.removeprefix("token_id:")) for i in named.choices[0].logprobs.content]
    assert all(
        list(TOK.decode([g]).encode()) == item.bytes for g, item in zip(gen, content, strict=True) if g < 128
    )
    ref = await ref_logprobs(weights, ids + gen)
    for i, item in enumerate(content):
        row = ref[len(ids) - 1 + i]
        assert item.logprob == pytest.approx(float(row[gen[i]]), abs=1e-3)
        assert [t.logprob for t in item.top_logprobs] == pytest.approx(row.topk(3).values.tolist(), abs=1e-3)
        assert item.top_logprobs[0].bytes == item.bytes  # greedy chose the most likely
    chunks = [c async for c in await client.chat.completions.create(**kwargs, stream=True)]
    streamed = [
        item for c in chunks if c.choices and c.choices[0].logprobs for item in c.choices[0].logprobs.content
    ]
    assert [(i.token, round(i.logprob, 4)) for i in streamed] == [
        (i.token, round(i.logprob, 4)) for i in content
    ]


async def test_echo_returns_the_prompt_and_its_logprobs(stack, client, weights) -> None:
    prompt = "Score this prompt"
    ids = TOK.encode(prompt)
    ref = await ref_logprobs(weights, ids)
    only = await client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    c = only.choices[0]
    assert c.text == prompt
    assert (
        c.logprobs.tokens[0] == "<|bos|>"
        and c.logprobs.token_logprobs[0] is None
        and c.logprobs.top_logprobs[0] is None
    )
    assert len(c.logprobs.tokens) == len(ids)
    for j in range(1, len(ids)):
        assert c.logprobs.token_logprobs[j] == pytest.approx(float(ref[j - 1, ids[j]]), abs=1e-3)
        assert len(c.logprobs.top_logprobs[j]) <= 2
    both = await client.completions.create(
        model="tiny", prompt=prompt, max_tokens=5, echo=True, temperature=0, extra_body=NO_EOS
    )
    plain = await client.completions.create(
        model="tiny", prompt=prompt, max_tokens=5, temperature=0, extra_body=NO_EOS
    )
    assert both.choices[0].text == prompt + plain.choices[0].text
    chunks = [
        ch
        async for ch in await client.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=5,
            echo=True,
            temperature=0,
            stream=True,
            extra_body=NO_EOS,
        )
    ]
    assert "".join(ch.choices[0].text for ch in chunks) == both.choices[0].text
    # vLLM's prompt_logprobs field: null, then {token id: {logprob, rank, decoded_token}}.
    raw = await client.completions.with_raw_response.create(
        model="tiny", prompt=prompt, max_tokens=1, extra_body={"prompt_logprobs": 1}
    )
    plps = json.loads(raw.text)["choices"][0]["prompt_logprobs"]
    assert plps[0] is None and len(plps) == len(ids)
    assert plps[1][str(ids[1])]["logprob"] == pytest.approx(float(ref[0, ids[1]]), abs=1e-3)


# ---- n and lists of prompts ---------------------------------------------------------------------------
async def test_n_choices_greedy_identical_seeded_reproducible(stack, client) -> None:
    greedy = await client.completions.create(
        model="tiny", prompt="n greedy", max_tokens=6, n=3, temperature=0, extra_body=NO_EOS
    )
    assert [c.index for c in greedy.choices] == [0, 1, 2]
    assert len({c.text for c in greedy.choices}) == 1
    assert greedy.usage.prompt_tokens == len(TOK.encode("n greedy"))  # counted once
    assert greedy.usage.completion_tokens == 18
    kwargs = {
        "model": "tiny",
        "prompt": "n seeded",
        "max_tokens": 8,
        "n": 3,
        "temperature": 1.0,
        "seed": 7,
        "extra_body": NO_EOS,
    }
    a = await client.completions.create(**kwargs)
    b = await client.completions.create(**kwargs)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1  # each choice has its own derived seed
    # Choice 1 samples with seed + 1.
    one = await client.completions.create(**{**kwargs, "n": 1, "seed": 8})
    assert one.choices[0].text == a.choices[1].text
    stream = await client.completions.create(**kwargs, stream=True)
    texts: dict[int, str] = {}
    order = []
    async for chunk in stream:
        c = chunk.choices[0]
        texts[c.index] = texts.get(c.index, "") + c.text
        order.append(c.index)
    assert texts == {c.index: c.text for c in a.choices}
    assert sorted(set(order)) == [0, 1, 2]


async def test_list_of_prompts_is_prompt_major(stack, client) -> None:
    out = await client.completions.create(
        model="tiny", prompt=["first", "second one"], n=2, max_tokens=4, temperature=0, extra_body=NO_EOS
    )
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    single = {
        p: (
            await client.completions.create(
                model="tiny", prompt=p, max_tokens=4, temperature=0, extra_body=NO_EOS
            )
        )
        .choices[0]
        .text
        for p in ("first", "second one")
    }
    assert [c.text for c in out.choices] == [single["first"]] * 2 + [single["second one"]] * 2
    assert out.usage.prompt_tokens == len(TOK.encode("first")) + len(TOK.encode("second one"))
    by_ids = await client.completions.create(
        model="tiny", prompt=[[256, 104], [256, 105]], max_tokens=2, temperature=0, extra_body=NO_EOS
    )
    assert len(by_ids.choices) == 2 and by_ids.usage.prompt_tokens == 4


async def test_chat_n_streams_a_role_chunk_per_choice(stack, client) -> None:
    stream = await client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "two"}],
        n=2,
        max_tokens=5,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=NO_EOS,
    )
    chunks = [c async for c in stream]
    roles = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role == "assistant"]
    assert sorted(roles) == [0, 1]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    content = {
        i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        for i in (0, 1)
    }
    assert content[0] == content[1]


# ---- sampling parameters ----------------------------------------------------------------------------
async def test_penalties_match_the_reference_under_greedy(stack, client, weights) -> None:
    prompt = "aaaa repeat repeat"
    rep, freq, pres = 1.3, 0.4, 0.6
    out = await client.completions.create(
        model="tiny",
        prompt=prompt,
        max_tokens=8,
        temperature=0,
        frequency_penalty=freq,
        presence_penalty=pres,
        extra_body={"repetition_penalty": rep, **NO_EOS},
    )
    ids, gen = TOK.encode(prompt), []
    for _ in range(8):
        logits = (await asyncio.to_thread(reference_logits, PLAN.arch, weights, torch.tensor(ids + gen)))[-1]
        x = ref_penalties(logits.tolist(), ids, gen, rep, freq, pres)
        gen.append(max(range(len(x)), key=x.__getitem__))
    assert out.choices[0].text == TOK.decode(gen)


async def test_seeded_sampling_with_every_filter_is_deterministic(stack, client) -> None:
    kwargs = {
        "model": "tiny",
        "prompt": "filters",
        "max_tokens": 12,
        "temperature": 0.9,
        "top_p": 0.9,
        "seed": 123,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.2,
        "extra_body": {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 4, **NO_EOS},
    }
    a = await client.completions.create(**kwargs)
    b = await client.completions.create(**kwargs)
    assert a.choices[0].text == b.choices[0].text and a.usage.completion_tokens == 12
    # top_k 1 is greedy whatever the temperature.
    k1 = await client.completions.create(
        **{**kwargs, "extra_body": {"top_k": 1, **NO_EOS}, "presence_penalty": 0, "frequency_penalty": 0}
    )
    g = await client.completions.create(
        model="tiny", prompt="filters", max_tokens=12, temperature=0, extra_body=NO_EOS
    )
    assert k1.choices[0].text == g.choices[0].text


async def test_stop_token_ids_min_tokens_and_include_stop_str(stack, client) -> None:
    base = await client.completions.create(
        model="tiny", prompt="stop ids", max_tokens=20, temperature=0, extra_body=NO_EOS
    )
    ids = await token_ids(
        client, model="tiny", prompt="stop ids", max_tokens=20, temperature=0, extra_body=NO_EOS
    )
    assert TOK.decode(ids) == base.choices[0].text
    k = next(i for i in range(3, 20) if ids[i] < 128)  # an ASCII byte: one token, one character
    stop_id = ids[k]
    first = ids.index(stop_id)
    text = base.choices[0].text
    out = await client.completions.create(
        model="tiny",
        prompt="stop ids",
        max_tokens=20,
        temperature=0,
        extra_body={"stop_token_ids": [stop_id], **NO_EOS},
    )
    assert out.choices[0].finish_reason == "stop" and out.usage.completion_tokens == first + 1
    assert out.choices[0].text == TOK.decode(ids[:first])
    raw = json.loads(
        (
            await client.completions.with_raw_response.create(
                model="tiny",
                prompt="stop ids",
                max_tokens=20,
                temperature=0,
                extra_body={"stop_token_ids": [stop_id], "include_stop_str_in_output": True, **NO_EOS},
            )
        ).text
    )
    assert raw["choices"][0]["stop_reason"] == stop_id
    assert raw["choices"][0]["text"] == TOK.decode(ids[: first + 1])
    late = await client.completions.create(
        model="tiny",
        prompt="stop ids",
        max_tokens=20,
        temperature=0,
        extra_body={"stop_token_ids": [stop_id], "min_tokens": first + 2, **NO_EOS},
    )
    assert late.usage.completion_tokens > first + 1
    stop = text[k : k + 2]
    cut = text.index(stop)
    raw = json.loads(
        (
            await client.completions.with_raw_response.create(
                model="tiny",
                prompt="stop ids",
                max_tokens=20,
                temperature=0,
                stop=[stop],
                extra_body={"include_stop_str_in_output": True, **NO_EOS},
            )
        ).text
    )
    assert raw["choices"][0]["text"] == text[: cut + len(stop)] and raw["choices"][0]["stop_reason"] == stop


async def test_skip_special_tokens(stack, client) -> None:
    body = {
        "model": "tiny",
        "prompt": "special",
        "max_tokens": 3,
        "temperature": 0,
        "logit_bias": {"256": 100},
    }
    skip = await client.completions.create(**body, extra_body=NO_EOS)
    keep = await client.completions.create(**body, extra_body={"skip_special_tokens": False, **NO_EOS})
    assert (skip.choices[0].text, keep.choices[0].text) == ("", "<|bos|><|bos|><|bos|>")
    assert skip.usage.completion_tokens == 3
    allowed = await client.completions.create(
        model="tiny",
        prompt="x",
        max_tokens=6,
        temperature=1.0,
        seed=1,
        extra_body={"allowed_token_ids": [97, 98], **NO_EOS},
    )
    assert set(allowed.choices[0].text) <= {"a", "b"}


# ---- fields, endpoints, headers ---------------------------------------------------------------------------
async def test_unknown_fields_are_ignored_with_a_warning(stack, client, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="moeplane.workers.frontend.app")
    out = await client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "meta"}],
        max_tokens=2,
        user="u-1",
        metadata={"k": "v"},
        store=False,
        response_format={"type": "text"},
        extra_body={"some_future_field": 1},
    )
    assert out.choices[0].message.content is not None
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "metadata" in warned and "some_future_field" in warned and "user" not in warned.split(":")[-1]


async def test_models_tokenize_detokenize(stack, client) -> None:
    models = await client.models.list()
    card = models.data[0]
    assert card.id == "tiny" and card.owned_by == "moeplane"
    assert card.model_extra["max_model_len"] == 512 and card.model_extra["root"] == "tiny"
    assert (await client.models.retrieve("tiny")).id == "tiny"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")
    ids = await tokenize(stack, prompt="héllo")
    assert ids == TOK.encode("héllo")
    async with aiohttp.ClientSession() as http:
        async with http.post(stack.url + "/detokenize", json={"tokens": ids}) as resp:
            assert (await resp.json()) == {"prompt": "héllo"}
        async with http.post(
            stack.url + "/tokenize",
            json={"prompt": "ab", "return_token_strs": True, "add_special_tokens": False},
        ) as resp:
            assert await resp.json() == {
                "count": 2,
                "max_model_len": 512,
                "tokens": [97, 98],
                "token_strs": ["a", "b"],
            }


async def test_x_request_id_is_honoured_and_echoed(stack, client) -> None:
    raw = await client.completions.with_raw_response.create(
        model="tiny", prompt="id", max_tokens=2, extra_headers={"X-Request-Id": "trace-42"}
    )
    assert raw.headers["x-request-id"] == "trace-42" and raw.parse().id == "cmpl-trace-42"
    # The same id twice at once: both are served.
    both = await asyncio.gather(
        *(
            client.completions.create(
                model="tiny", prompt="dup", max_tokens=3, extra_headers={"X-Request-Id": "dup"}
            )
            for _ in range(2)
        )
    )
    assert [o.id for o in both] == ["cmpl-dup", "cmpl-dup"]
    with pytest.raises(openai.BadRequestError) as info:
        await client.completions.create(
            model="tiny", prompt="id", max_tokens=0, extra_headers={"X-Request-Id": "err-7"}
        )
    assert info.value.response.headers["x-request-id"] == "err-7"


async def test_api_key(stack, tmp_path) -> None:
    assert stack.frontend is not None
    fe = FrontendServer(
        FrontendConfig(served_model="tiny", max_model_len=512, api_key="s3cret"),
        stack.redis_url,
        PLAN.keys,
        TOK,
    )
    await fe.start()
    try:
        await fe.cache.wait_for(list({g.role for g in stack.groups}), timeout_s=WAIT_S)
        bad = openai.AsyncOpenAI(base_url=fe.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            await bad.completions.create(model="tiny", prompt="k", max_tokens=1)
        assert info.value.code == "invalid_api_key" and info.value.response.headers["x-request-id"]
        good = openai.AsyncOpenAI(base_url=fe.url + "/v1", api_key="s3cret", max_retries=0)
        assert (
            await good.completions.create(model="tiny", prompt="k", max_tokens=2)
        ).usage.completion_tokens >= 1
        async with aiohttp.ClientSession() as http:
            for path in ("/health", "/metrics"):
                async with http.get(fe.url + path) as resp:
                    assert resp.status == 200
            for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic s3cret"}):
                async with http.post(fe.url + "/tokenize", json={"prompt": "x"}, headers=headers) as resp:
                    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
                    assert (await resp.json())["error"]["code"] == "invalid_api_key"
        # The aiperf-style harness, with the key, as aiperf would run against it.
        out = tmp_path / "aiperf.json"
        proc = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                str(REPO / "bench" / "aiperf_chat.py"),
                "--url",
                fe.url,
                "--model",
                "tiny",
                "--requests",
                "6",
                "--concurrency",
                "3",
                "--isl-words",
                "12",
                "--osl",
                "8",
                "--api-key",
                "s3cret",
                "--json",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(out.read_text())
        assert report["ok"] == 6 and report["errors"] == [] and report["output_tokens"] == 48
        assert not any(report["protocol"].values()) and report["ttft_ms"]["p50"] is not None
    finally:
        await fe.stop()
