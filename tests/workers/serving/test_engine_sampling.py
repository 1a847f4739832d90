"""The engine's sampling extras in process (one aggregated EP1 rank of `tiny`, CPU): logprobs and
prompt logprobs equal the single-process reference's log-softmax, stop token ids, stop strings
with include_stop_str_in_output, min_tokens, skip_special_tokens, and a seeded request resumed
after some tokens (output_offset) continuing exactly as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from moeplane.api.presets import model_preset
from moeplane.workers.model import EPModelRunner, RandomWeights, load_tokenizer
from moeplane.workers.model.reference import reference_logits
from moeplane.workers.model.weights import full_state_dict
from moeplane.workers.serving.config import Role, SchedulerConfig
from moeplane.workers.serving.engine import EngineConfig, NewRequest, RankEngine, StepInput, TokenOutput
from moeplane.workers.serving.sequence import FinishReason, SamplingParams

pytestmark = pytest.mark.integration

SEED = 11
ARCH = model_preset("tiny")
TOK = load_tokenizer("bytes", ARCH)


@pytest.fixture(scope="module")
def weights():
    return full_state_dict(ARCH, RandomWeights(ARCH, SEED))


def engine(chunk_tokens: int = 0) -> RankEngine:
    torch.set_num_threads(1)
    runner = EPModelRunner(ARCH, SEED)
    config = EngineConfig(
        role=Role.DECODE,
        num_blocks=64,
        block_size=4,
        scheduler=SchedulerConfig(
            max_num_batched_tokens=64,
            max_prefill_chunk_tokens=chunk_tokens,
            max_num_seqs=8,
            max_model_len=256,
        ),
    )
    return RankEngine(config, runner, runner.allocate_kv_cache(64, 4), TOK)


def run(eng: RankEngine, reqs: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[TokenOutput]]:
    inp = StepInput(new=tuple(NewRequest(r, tuple(p), s) for r, (p, s) in reqs.items()))
    got: dict[str, list[TokenOutput]] = {r: [] for r in reqs}
    for _ in range(600):
        for out in eng.step(inp).outputs:
            got[out.request_id].append(out)
        inp = StepInput()
        if all(o and o[-1].finish_reason is not None for o in got.values()):
            return got
    raise AssertionError("requests did not finish")


def tokens(outs: list[TokenOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def test_logprobs_and_prompt_logprobs_equal_the_reference(weights) -> None:
    prompt = TOK.encode("logprobs of a chunked prompt")
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=3, prompt_logprobs=2)
    sampled = SamplingParams(temperature=0.8, seed=3, max_tokens=6, ignore_eos=True, logprobs=0)
    # A 7-token budget chunks the prompt over several steps.
    got = run(engine(chunk_tokens=7), {"g": (prompt, greedy), "s": (prompt, sampled)})
    for rid in ("g", "s"):
        out = tokens(got[rid])
        ref = torch.log_softmax(reference_logits(ARCH, weights, torch.tensor(prompt + out)), dim=-1)
        lps = [lp for o in got[rid] for lp in o.logprobs]
        assert [lp.token_id for lp in lps] == out
        for i, lp in enumerate(lps):
            row = ref[len(prompt) - 1 + i]
            assert lp.logprob == pytest.approx(float(row[out[i]]), abs=1e-4)
            assert lp.rank == 1 + int((row > row[out[i]] + 1e-6).sum())
            want = 3 if rid == "g" else 0
            assert [t for t, _ in lp.top] == row.topk(want).indices.tolist()
        if rid == "g":
            assert all(lp.rank == 1 for lp in lps)  # greedy picks the most likely token
    plp = got["g"][0].prompt_logprobs
    assert plp is not None and len(plp) == len(prompt) - 1
    assert all(o.prompt_logprobs is None for o in got["g"][1:])
    ref = torch.log_softmax(reference_logits(ARCH, weights, torch.tensor(prompt)), dim=-1)
    for j, lp in enumerate(plp):
        assert lp.token_id == prompt[j + 1]
        assert lp.logprob == pytest.approx(float(ref[j, prompt[j + 1]]), abs=1e-4)
        assert [t for t, _ in lp.top] == ref[j].topk(2).indices.tolist()
    assert got["s"][0].prompt_logprobs is None


def test_stop_token_ids_stop_strings_and_min_tokens() -> None:
    prompt = TOK.encode("stops")
    base = run(engine(), {"b": (prompt, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))})
    ids = tokens(base["b"])
    text = "".join(o.text for o in base["b"])
    stop_id = ids[5]
    first = ids.index(stop_id)
    reqs = {
        "id": (
            prompt,
            SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop_token_ids=(stop_id,)),
        ),
        "id+": (
            prompt,
            SamplingParams(
                temperature=0,
                max_tokens=24,
                ignore_eos=True,
                stop_token_ids=(stop_id,),
                include_stop_str_in_output=True,
            ),
        ),
        "min": (
            prompt,
            SamplingParams(
                temperature=0, max_tokens=24, ignore_eos=True, stop_token_ids=(stop_id,), min_tokens=first + 2
            ),
        ),
    }
    got = run(engine(), reqs)
    # The stop token is counted and its logprob kept, but its text is left out (vLLM).
    assert tokens(got["id"])[-1] == stop_id and len(tokens(got["id"])) == first + 1
    assert got["id"][-1].finish_reason is FinishReason.STOP and got["id"][-1].stop_reason == stop_id
    assert "".join(o.text for o in got["id"]) == TOK.decode(ids[:first])
    assert "".join(o.text for o in got["id+"]) == TOK.decode(ids[: first + 1])
    # min_tokens masks the stop token, so the greedy path changes after the first occurrence.
    assert len(tokens(got["min"])) > first + 1
    stop = text[6:8]
    cut = text.index(stop)
    got = run(
        engine(),
        {
            "s": (prompt, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=(stop,))),
            "s+": (
                prompt,
                SamplingParams(
                    temperature=0,
                    max_tokens=24,
                    ignore_eos=True,
                    stop=(stop,),
                    include_stop_str_in_output=True,
                ),
            ),
            "late": (
                prompt,
                SamplingParams(
                    temperature=0, max_tokens=24, ignore_eos=True, stop=(stop,), min_tokens=cut + 4
                ),
            ),
        },
    )
    assert "".join(o.text for o in got["s"]) == text[:cut] and got["s"][-1].stop_reason == stop
    assert "".join(o.text for o in got["s+"]) == text[: cut + len(stop)]
    late = "".join(o.text for o in got["late"])
    assert len(tokens(got["late"])) > cut + 2 and late.startswith(text[: cut + len(stop)])


def test_special_tokens_are_skipped_unless_asked() -> None:
    prompt = TOK.encode("special")
    # A logit bias forces BOS twice among ordinary tokens; skip_special_tokens decides its text.
    force = ((TOK.bos_id, 100.0),)
    p = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, logit_bias=force)
    got = run(
        engine(),
        {
            "skip": (prompt, p),
            "keep": (prompt, SamplingParams(**{**p.__dict__, "skip_special_tokens": False})),
        },
    )
    assert tokens(got["skip"]) == [TOK.bos_id] * 2
    assert "".join(o.text for o in got["skip"]) == ""
    assert "".join(o.text for o in got["keep"]) == "<|bos|><|bos|>"


def test_a_resumed_seeded_request_continues_identically() -> None:
    prompt = TOK.encode("resume me")
    p = SamplingParams(
        temperature=1.0, seed=42, max_tokens=12, ignore_eos=True, frequency_penalty=0.5, min_tokens=3
    )
    whole = tokens(run(engine(), {"w": (prompt, p)})["w"])
    # The same request after 5 tokens moved to a fresh rank: those tokens end the prompt.
    rest = tokens(run(engine(), {"r": (prompt + whole[:5], p.resumed(5))})["r"])
    assert whole[:5] + rest == whole
