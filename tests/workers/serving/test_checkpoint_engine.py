"""A rank built from a checkpoint location (`RankSpec.weights` = a directory) serves what
transformers computes: greedy tokens equal transformers' greedy continuation, through the chat
template, and the streamed text equals the tokenizer's decode of those tokens."""

from __future__ import annotations

import pytest
import torch
from moeplane.api.hf_config import read_hf_config
from moeplane.workers.model import EPModelRunner, HFTokenizer, SafetensorsWeights
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.config import Role, SchedulerConfig
from moeplane.workers.serving.engine import EngineConfig, NewRequest, RankEngine, StepInput
from moeplane.workers.serving.sequence import FinishReason, SamplingParams

from tests.workers.model.hf_reference import hf_model

pytestmark = pytest.mark.unit

STEPS = 10


def _hf_greedy(path, prompt: list[int], n: int) -> list[int]:
    model, ids = hf_model(path), list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("kind", ["deepseek-v3", "qwen3-moe"])
def test_a_rank_from_a_checkpoint_location_generates_what_transformers_does(hf_checkpoint, kind: str) -> None:
    path = hf_checkpoint(kind)
    arch = read_hf_config(path).arch
    engine_config = EngineConfig(Role.DECODE, num_blocks=32, block_size=4,
                                 scheduler=SchedulerConfig(max_num_batched_tokens=16, max_num_seqs=4))
    spec = RankSpec(arch=arch, weights=str(path), engine=engine_config)
    source, tok = spec.weight_source(), spec.load_tokenizer()
    assert isinstance(source, SafetensorsWeights) and isinstance(tok, HFTokenizer)
    runner = EPModelRunner(arch, source)
    engine = RankEngine(engine_config, runner, runner.allocate_kv_cache(32, 4), tok)
    chat = [{"role": "user", "content": "Say something 🙂"}]
    prompts = {
        "chat": tok.encode(tok.apply_chat_template(chat), add_special_tokens=False),
        "plain": tok.encode("The quick brown fox"),
    }
    greedy = SamplingParams(temperature=0.0, max_tokens=STEPS, ignore_eos=True)
    inp = StepInput(new=tuple(NewRequest(r, tuple(p), greedy) for r, p in prompts.items()))
    tokens: dict[str, list[int]] = {r: [] for r in prompts}
    texts: dict[str, str] = {r: "" for r in prompts}
    done: set[str] = set()
    for _ in range(200):
        for out in engine.step(inp).outputs:
            tokens[out.request_id] += out.token_ids
            texts[out.request_id] += out.text
            if out.finish_reason is not None:
                assert out.finish_reason is FinishReason.LENGTH
                done.add(out.request_id)
        inp = StepInput()
        if done == set(prompts):
            break
    assert done == set(prompts)
    for rid, prompt in prompts.items():
        assert tokens[rid] == _hf_greedy(path, prompt, STEPS), rid
        assert texts[rid] == tok.decode(tokens[rid]), rid
