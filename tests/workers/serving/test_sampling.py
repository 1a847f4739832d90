"""Sampling (vLLM's logits pipeline, seeds, logprobs) against plain per-row references, and stop
strings on decoded text."""

from __future__ import annotations

import math
import random

import pytest
import torch
from moeplane.workers.model.tokenizer import ByteTokenizer
from moeplane.workers.serving.sampling import (
    Sampler,
    SampleRow,
    apply_penalties,
    min_p_filter,
    token_counts,
    token_logprobs,
    top_k_top_p_filter,
)
from moeplane.workers.serving.sequence import EngineRequestError, SamplingParams
from moeplane.workers.serving.text import TextStream

pytestmark = pytest.mark.unit

NEG = float("-inf")


def row(params: SamplingParams, prompt=(1,), output=()) -> SampleRow:
    return SampleRow(params, list(prompt), list(output))


def draw(sampler: Sampler, logits: torch.Tensor, params: list[SamplingParams], outputs=None) -> list[int]:
    outputs = outputs or [[] for _ in params]
    rows = [row(p, output=o) for p, o in zip(params, outputs, strict=True)]
    return [s.token_id for s in sampler(logits, rows)]


# ---- plain references: one row as a list of floats -------------------------------------------------
def ref_penalties(x: list[float], prompt: list[int], output: list[int], rep: float, freq: float, pres: float):
    out = list(x)
    for t in range(len(out)):
        if t in prompt or t in output:
            out[t] = out[t] / rep if out[t] > 0 else out[t] * rep
        n = output.count(t)
        out[t] -= freq * n
        if n:
            out[t] -= pres
    return out


def softmax(x: list[float]) -> list[float]:
    m = max(x)
    e = [math.exp(v - m) if v != NEG else 0.0 for v in x]
    z = sum(e)
    return [v / z for v in e]


def ref_min_p(x: list[float], min_p: float) -> list[float]:
    p = softmax(x)
    return [NEG if p[t] < min_p * max(p) else x[t] for t in range(len(x))]


def ref_top_k_top_p(x: list[float], k: int, top_p: float) -> list[float]:
    out = list(x)
    if 0 < k < len(x):
        kth = sorted(x, reverse=True)[k - 1]
        out = [v if v >= kth else NEG for v in out]
    probs = softmax(out)
    order = sorted(range(len(x)), key=lambda t: -probs[t])
    mass = 0.0
    for t in order:
        if mass >= top_p and t != order[0]:
            out[t] = NEG
        mass += probs[t]
    return out


def close(a: list[float], b: list[float]) -> bool:
    return all((u == v == NEG) or abs(u - v) < 1e-4 for u, v in zip(a, b, strict=True))


# ---- the stages against the references ----------------------------------------------------------------
def test_penalties_match_vllm_definitions() -> None:
    rng = random.Random(0)
    for _ in range(30):
        vocab = 12
        x = [rng.uniform(-3, 3) for _ in range(vocab)]
        prompt = [rng.randrange(vocab) for _ in range(rng.randrange(1, 6))]
        output = [rng.randrange(vocab) for _ in range(rng.randrange(0, 8))]
        rep, freq, pres = rng.uniform(0.5, 2.0), rng.uniform(-2, 2), rng.uniform(-2, 2)
        r = row(SamplingParams(), prompt, output)
        mask, counts = token_counts([r], vocab, "cpu")
        got = apply_penalties(
            torch.tensor([x]), mask, counts, torch.tensor([rep]), torch.tensor([freq]), torch.tensor([pres])
        )
        assert close(got[0].tolist(), ref_penalties(x, prompt, output, rep, freq, pres))


def test_min_p_top_k_top_p_match_the_references() -> None:
    rng = random.Random(1)
    for _ in range(60):
        vocab = rng.randrange(2, 16)
        x = [rng.gauss(0, 2) for _ in range(vocab)]
        k, p = rng.choice([0, 1, 2, 5, 40]), rng.choice([1.0, 0.9, 0.5, 0.1])
        mp = rng.choice([0.0, 0.05, 0.3])
        got = min_p_filter(torch.tensor([x]), torch.tensor([mp]))[0].tolist()
        assert close(got, ref_min_p(x, mp))
        got = top_k_top_p_filter(torch.tensor([x]), torch.tensor([k]), torch.tensor([p]))[0].tolist()
        assert close(got, ref_top_k_top_p(x, k, p)), (x, k, p)


def test_top_k_keeps_ties_and_top_p_keeps_the_nucleus() -> None:
    x = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    assert top_k_top_p_filter(x, torch.tensor([2]), torch.tensor([1.0]))[0].tolist() == [2.0, 1.0, 1.0, NEG]
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = top_k_top_p_filter(logits.unsqueeze(0), torch.tensor([0]), torch.tensor([0.7]))[0]
    assert torch.isneginf(kept[2:]).all() and not torch.isneginf(kept[:2]).any()
    drawn = draw(Sampler(seed=1), logits.unsqueeze(0).repeat(300, 1), [SamplingParams(top_p=0.7)] * 300)
    assert set(drawn) == {0, 1}


def test_logprobs_are_the_raw_distribution_with_ranks_and_top_n() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0, 0.5]])
    raw = torch.log_softmax(logits, dim=-1)[0].tolist()
    # Temperature, penalties and filters change the sampling, never the reported logprobs.
    params = SamplingParams(temperature=0.7, top_k=2, repetition_penalty=1.5, logprobs=3, seed=5)
    (out,) = Sampler()(logits, [row(params, prompt=[1, 2])])
    lp = out.logprobs
    assert lp is not None and lp.token_id == out.token_id
    assert lp.logprob == pytest.approx(raw[out.token_id], abs=1e-6)
    assert lp.rank == 1 + sum(v > raw[out.token_id] for v in raw)
    assert [t for t, _ in lp.top] == [1, 2, 0]
    assert [v for _, v in lp.top] == pytest.approx([raw[1], raw[2], raw[0]], abs=1e-6)
    (zero,) = Sampler()(logits, [row(SamplingParams(temperature=0, logprobs=0))])
    assert zero.logprobs is not None and zero.logprobs.top == () and zero.logprobs.rank == 1
    (none,) = Sampler()(logits, [row(SamplingParams(temperature=0))])
    assert none.logprobs is None
    assert token_logprobs(torch.log_softmax(logits, -1), [3], [1])[0].rank == 5


# ---- the sampler ----------------------------------------------------------------------------------------
def test_greedy_takes_the_argmax_after_penalties_and_bias() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    assert draw(Sampler(), logits, [SamplingParams(temperature=0)] * 2) == [1, 0]
    biased = SamplingParams(temperature=0, logit_bias=((2, 100.0),))
    assert draw(Sampler(), logits[:1], [biased]) == [2]
    allowed = SamplingParams(temperature=0, allowed_token_ids=(0, 2))
    assert draw(Sampler(), logits[:1], [allowed]) == [0]
    # Token 0 was already output twice: a frequency penalty of 1 takes 5.0 below 4.9.
    freq = SamplingParams(temperature=0, frequency_penalty=1.0)
    assert draw(Sampler(), logits[1:], [freq], [[0, 0]]) == [2]


def test_min_tokens_masks_eos_and_stop_token_ids_until_reached() -> None:
    eos = 3
    logits = torch.tensor([[0.0, 0.0, 5.0, 9.0]])
    p = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=(2,))
    sampler = Sampler(eos_id=eos)
    assert draw(sampler, logits, [p], [[]]) == [0]  # EOS and stop id 2 masked
    assert draw(sampler, logits, [p], [[0]]) == [0]
    assert draw(sampler, logits, [p], [[0, 0]]) == [eos]
    # ignore_eos: EOS is not a stop token, so min_tokens leaves it alone.
    q = SamplingParams(temperature=0, min_tokens=2, ignore_eos=True)
    assert draw(sampler, logits, [q], [[]]) == [eos]
    # Masks that leave nothing fall back to the raw logits.
    r = SamplingParams(temperature=0, min_tokens=2, allowed_token_ids=(eos,))
    assert draw(sampler, logits, [r], [[]]) == [eos]


def test_seeded_sampling_is_reproducible_per_output_index_and_batch_independent() -> None:
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    p = SamplingParams(temperature=1.0, seed=1234)
    first = [draw(Sampler(seed=0), logits, [p], [[7] * i])[0] for i in range(20)]
    again = [draw(Sampler(seed=99), logits, [p], [[7] * i])[0] for i in range(20)]
    assert first == again  # the sampler's own generator does not matter for seeded requests
    assert len(set(first)) > 3  # and it is really sampling
    other = [draw(Sampler(), logits, [SamplingParams(seed=4321)], [[7] * i])[0] for i in range(20)]
    assert other != first
    # In a batch with unseeded and other seeded rows, the seeded row draws the same tokens.
    batch = logits.repeat(3, 1)
    mixed = [draw(Sampler(seed=3), batch, [SamplingParams(), p, SamplingParams(seed=9)],
                  [[], [7] * i, []])[1] for i in range(20)]
    assert mixed == first
    negative = SamplingParams(seed=-(2**63))
    assert draw(Sampler(), logits, [negative]) == draw(Sampler(seed=5), logits, [negative])


@pytest.mark.gpu
def test_the_sampler_runs_on_the_logits_device() -> None:
    """On CUDA: greedy tokens, logprobs and filters as on the CPU; seeded draws reproducible."""
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(2))
    params = [
        SamplingParams(temperature=0, logprobs=5, repetition_penalty=1.3, frequency_penalty=0.5),
        SamplingParams(temperature=0, logit_bias=((7, 50.0),), min_tokens=3, stop_token_ids=(7,)),
        SamplingParams(temperature=0.8, top_k=10, top_p=0.9, min_p=0.05, seed=11),
        SamplingParams(temperature=1.0, allowed_token_ids=(1, 2, 3), seed=12),
    ]
    rows = [row(p, prompt=[1, 5, 9], output=[5, 5]) for p in params]
    cpu = Sampler(eos_id=7)(logits, rows)
    gpu = Sampler(eos_id=7)(logits.cuda(), rows)
    again = Sampler(eos_id=7, seed=3)(logits.cuda(), rows)
    assert [s.token_id for s in gpu[:2]] == [s.token_id for s in cpu[:2]]
    assert [s.token_id for s in gpu] == [s.token_id for s in again]
    assert gpu[3].token_id in (1, 2, 3)
    assert gpu[0].logprobs is not None and cpu[0].logprobs is not None
    assert [t for t, _ in gpu[0].logprobs.top] == [t for t, _ in cpu[0].logprobs.top]
    assert gpu[0].logprobs.logprob == pytest.approx(cpu[0].logprobs.logprob, abs=1e-5)


def test_random_draws_follow_the_distribution() -> None:
    probs = [0.5, 0.3, 0.15, 0.05]
    logits = torch.log(torch.tensor([probs])).repeat(4000, 1)
    drawn = draw(Sampler(seed=0), logits, [SamplingParams()] * 4000)
    for t, q in enumerate(probs):
        assert abs(drawn.count(t) / 4000 - q) < 0.03, (t, drawn.count(t))


def test_temperature_sharpens_the_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(400, 1)
    sampler = Sampler(seed=0)
    cold = draw(sampler, logits, [SamplingParams(temperature=0.05)] * 400)
    hot = draw(sampler, logits, [SamplingParams(temperature=5.0)] * 400)
    assert cold.count(0) == 400
    assert len(set(hot)) == 4


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3.0}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": 20, "max_tokens": 10}, "min_tokens"),
        ({"seed": 2**63}, "seed"),
        ({"logprobs": 21}, "logprobs"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
        ({"stop": ("",)}, "stop"),
        ({"stop": ("a",) * 33}, "stop"),
        ({"stop_token_ids": (-1,)}, "stop_token_ids"),
        ({"logit_bias": ((1, 101.0),)}, "logit_bias"),
    ],
)
def test_bad_params_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(EngineRequestError) as info:
        SamplingParams(**kwargs)
    assert info.value.field == field and str(info.value).startswith(f"{field}: ")


def test_resumed_params_continue_the_same_request() -> None:
    p = SamplingParams(max_tokens=10, min_tokens=4, seed=3, prompt_logprobs=2)
    assert p.resumed(0) is p
    r = p.resumed(3)
    assert (r.max_tokens, r.output_offset, r.prompt_logprobs, r.min_tokens) == (7, 3, None, 4)


def ids(text: str) -> list[int]:
    return list(text.encode())


def stream_all(text: str, stop: tuple[str, ...]) -> tuple[list[str], bool]:
    tok = ByteTokenizer()
    s = TextStream(tok, stop)
    deltas, out = [], ids(text)
    for n in range(1, len(out) + 1):
        d = s.update(out[:n])
        deltas.append(d.text)
        if d.stopped:
            return deltas, True
    deltas.append(s.flush(out))
    return deltas, False


def test_stop_string_cuts_the_text_and_is_never_emitted() -> None:
    deltas, stopped = stream_all("hello wor<END>ld", ("<END>",))
    assert stopped and "".join(deltas) == "hello wor"
    assert not any("<" in d for d in deltas)  # the partial "<EN" was held back, not sent


def test_held_back_prefix_is_released_when_it_turns_out_harmless() -> None:
    deltas, stopped = stream_all("a<b<END", ("<END>",))
    assert not stopped and "".join(deltas) == "a<b<END"


def test_multibyte_characters_are_never_split() -> None:
    deltas, stopped = stream_all("héllo → wörld", ())
    assert not stopped and "".join(deltas) == "héllo → wörld"
    assert all("\ufffd" not in d for d in deltas)


def test_stop_string_spanning_tokens_and_multiple_stops() -> None:
    deltas, stopped = stream_all("abc\n\nxyz", ("\n\n", "zz"))
    assert stopped and "".join(deltas) == "abc"
