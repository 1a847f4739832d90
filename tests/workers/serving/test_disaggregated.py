"""The disaggregated path end to end on Ray: gRPC control -> prefill group (EP2) -> KV transfer over
gRPC between rank actors -> decode group (EP1, a different EP size) -> tokens.

Greedy output equals the single-process reference engine, and after 100 requests (a third of them
cancelled at different points) every block manager is back to zero used blocks.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import pytest_asyncio
from moeplane.api.presets import model_preset
from moeplane.workers.model import RandomWeights, load_tokenizer
from moeplane.workers.model.reference import reference_greedy
from moeplane.workers.model.weights import full_state_dict
from moeplane.workers.serving.actor import RankSpec
from moeplane.workers.serving.client import WorkerControlClient, WorkerControlError
from moeplane.workers.serving.config import Role, SchedulerConfig
from moeplane.workers.serving.controller import GroupController, GroupSpec
from moeplane.workers.serving.engine import EngineConfig
from moeplane.workers.serving.sequence import FinishReason, SamplingParams
from moeplane.workers.serving.service import ControlServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ARCH = model_preset("tiny")
SEED = 11
SCHED = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=16, max_model_len=256)


def group(group_id: str, role: Role, ep_size: int, block_size: int) -> GroupSpec:
    engine = EngineConfig(role=role, num_blocks=96, block_size=block_size, scheduler=SCHED, lease_s=60.0)
    rank = RankSpec(arch=ARCH, weights=SEED, engine=engine, kv_chunk_bytes=256 * 1024)
    return GroupSpec(group_id, role, ep_size, rank, num_cpus_per_rank=0.25)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def groups(ray_local):
    prefill = ControlServer(GroupController(group("p0", Role.PREFILL, 2, block_size=8)))
    decode = ControlServer(GroupController(group("d0", Role.DECODE, 1, block_size=16)))
    p_addr, d_addr = await asyncio.gather(prefill.start(), decode.start())
    clients = WorkerControlClient(p_addr), WorkerControlClient(d_addr)
    yield prefill, decode, clients
    for c in clients:
        await c.close()
    await asyncio.gather(prefill.stop(), decode.stop())


async def generate(
    clients, rid: str, prompt: list[int], sampling: SamplingParams
) -> tuple[list[int], str, FinishReason]:
    pc, dc = clients
    first = await pc.prefill(rid, prompt, sampling)
    tokens, text = [first.first_token_id], first.text
    if first.finish_reason is not None:
        return tokens, text, first.finish_reason
    reason = None
    async for ev in dc.decode(rid, prompt, sampling, first.first_token_id, first.kv):
        tokens.extend(ev.token_ids)
        text += ev.text
        reason = ev.finish_reason
        assert not ev.error, ev.error
    assert reason is not None
    return tokens, text, reason


async def wait_blocks_free(server: ControlServer, timeout_s: float = 30.0) -> list[int]:
    """The ranks' used blocks once all are free, or as they stand after a generous `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await server.controller.stats()
        used = [r.num_used_blocks for r in stats.ranks]
        if not any(used) or time.monotonic() > deadline:
            return used
        await asyncio.sleep(0.05)


async def test_greedy_through_prefill_kv_transfer_decode_equals_reference(groups) -> None:
    prefill, decode, clients = groups
    tok = load_tokenizer("bytes", ARCH)
    texts = ["The quick brown fox", "a", "Mixture of experts " * 6, "disaggregated serving!"]
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    results = await asyncio.gather(
        *(generate(clients, f"id{i}", tok.encode(t), greedy) for i, t in enumerate(texts))
    )
    weights = full_state_dict(ARCH, RandomWeights(ARCH, SEED))
    for text, (tokens, out_text, reason) in zip(texts, results, strict=True):
        expected = reference_greedy(ARCH, weights, tok.encode(text), 16)
        assert tokens == expected, text
        assert reason is FinishReason.LENGTH
        assert out_text == tok.decode(expected)
    stats = await prefill.controller.stats()
    assert all(r.num_steps > 0 for r in stats.ranks), "both DP ranks of the prefill group served"
    assert await wait_blocks_free(prefill) == [0, 0]
    assert await wait_blocks_free(decode) == [0]


async def test_decode_group_alone_serves_aggregated_and_rebalances(groups) -> None:
    """Without a KV handle the decode group computes the prompt itself; a placement switch between
    steps (EPLB) changes no token."""
    from moeplane.workers.placement import Placement

    _, decode, (_, dc) = groups
    tok = load_tokenizer("bytes", ARCH)
    prompt = tok.encode("aggregated serving")
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    tokens = [t async for ev in dc.decode("agg1", prompt, greedy) for t in ev.token_ids]
    weights = full_state_dict(ARCH, RandomWeights(ARCH, SEED))
    assert tokens == reference_greedy(ARCH, weights, prompt, 10)
    loads = await decode.controller.take_expert_load()
    assert len(loads) == 1 and int(loads[0].sum()) > 0
    flipped = Placement.from_phy2log(
        Placement.identity(ARCH.num_moe_layers, ARCH.num_routed_experts).phy2log.flip(1),
        ARCH.num_routed_experts,
        version=1,
    )
    await decode.controller.set_placement(flipped)
    again = [t async for ev in dc.decode("agg2", prompt, greedy) for t in ev.token_ids]
    assert again == tokens


async def test_100_requests_with_cancellations_leave_no_blocks(groups) -> None:
    prefill, decode, clients = groups
    pc, dc = clients
    rng = random.Random(5)
    sem = asyncio.Semaphore(12)
    outcomes: dict[str, str] = {}

    async def one(i: int) -> None:
        rid = f"load{i}"
        prompt = [rng.randrange(256) for _ in range(rng.randint(1, 120))]
        sampling = SamplingParams(temperature=0.8, seed=i, max_tokens=rng.randint(1, 24), stop=("zz",))
        mode = i % 6  # 0: cancel during prefill, 1: abandon the decode stream, 2: Cancel RPC
        async with sem:
            task = asyncio.ensure_future(pc.prefill(rid, prompt, sampling))
            if mode == 0:
                await asyncio.sleep(rng.random() * 0.05)
                task.cancel()
                outcomes[rid] = "cancelled-prefill"
                await asyncio.gather(task, return_exceptions=True)
                return
            first = await task
            if first.finish_reason is not None:
                outcomes[rid] = "finished-at-first"
                return
            stream = dc.decode(rid, prompt, sampling, first.first_token_id, first.kv)
            n = 0
            async for ev in stream:
                n += 1
                if mode == 1 and n == 2:
                    await stream.aclose()
                    outcomes[rid] = "abandoned"
                    return
                if mode == 2 and n == 2:
                    await dc.cancel(rid)
                if ev.finish_reason is not None:
                    outcomes[rid] = ev.finish_reason.value
                    assert ev.finish_reason is not FinishReason.ERROR, ev.error

    await asyncio.gather(*(one(i) for i in range(100)))
    assert len(outcomes) == 100
    assert "cancelled" in outcomes.values() and "abandoned" in outcomes.values()
    assert await wait_blocks_free(prefill) == [0, 0]
    assert await wait_blocks_free(decode) == [0]
    await prefill.controller.check_invariants()
    await decode.controller.check_invariants()
    stats = await prefill.controller.stats()
    assert stats.queue_depth == 0


async def test_bad_requests_get_invalid_argument_naming_the_field(groups) -> None:
    _, _, (pc, dc) = groups
    with pytest.raises(WorkerControlError) as info:
        await pc.prefill("bad1", [1, 2, 999], SamplingParams(max_tokens=4))
    assert info.value.code.name == "INVALID_ARGUMENT" and "prompt_token_ids" in info.value.message
    with pytest.raises(WorkerControlError) as info:
        await pc.prefill("bad2", [1] * 250, SamplingParams(max_tokens=100))
    assert info.value.code.name == "INVALID_ARGUMENT" and "max_tokens" in info.value.message
    with pytest.raises(WorkerControlError) as info:
        async for _ in dc.decode("bad3", [], SamplingParams(max_tokens=4)):
            pass
    assert info.value.code.name == "INVALID_ARGUMENT" and "prompt_token_ids" in info.value.message
    health = await pc.health()
    assert health.serving and health.num_ranks == 2
