"""The scheduler without a model: chunked prefill, token budget, preemption, imports, cancel."""

from __future__ import annotations

import random

import pytest
from moeplane.workers.serving.block_manager import BlockManager
from moeplane.workers.serving.config import EngineConfigError, SchedulerConfig
from moeplane.workers.serving.scheduler import Scheduler, SchedulerOutput
from moeplane.workers.serving.sequence import (
    EngineRequestError,
    FinishReason,
    SamplingParams,
    Sequence,
    SequenceStatus,
)

pytestmark = pytest.mark.unit


def seq(rid: str, prompt_len: int, max_tokens: int = 8) -> Sequence:
    return Sequence(rid, list(range(1, prompt_len + 1)), prompt_len, SamplingParams(max_tokens=max_tokens))


def make(num_blocks: int = 64, block_size: int = 4, **cfg: int) -> Scheduler:
    return Scheduler(SchedulerConfig(**cfg), BlockManager(num_blocks, block_size))


def run_step(s: Scheduler, out: SchedulerOutput, token: int = 7) -> None:
    """What an engine does after the forward: commit, then append a token where one is sampled."""
    s.commit(out)
    for chunk in out.chunks:
        if chunk.samples:
            chunk.seq.token_ids.append(token)
            if chunk.seq.num_output_tokens >= chunk.seq.sampling.max_tokens:
                s.finish(chunk.seq, FinishReason.LENGTH)


def test_long_prompt_is_prefilled_in_chunks_within_the_budget() -> None:
    s = make(max_num_batched_tokens=16, max_num_seqs=4, max_model_len=128)
    long = seq("long", 40)
    s.add(long)
    starts = []
    for _ in range(3):
        out = s.schedule()
        assert out.num_tokens <= 16
        (chunk,) = out.chunks
        starts.append((chunk.start, chunk.num_tokens, chunk.samples))
        run_step(s, out)
    assert starts == [(0, 16, False), (16, 16, False), (32, 8, True)]
    assert long.num_output_tokens == 1 and long.num_computed_tokens == 40


def test_decode_and_prefill_share_a_step() -> None:
    s = make(max_num_batched_tokens=12, max_num_seqs=4, max_model_len=128)
    a, b = seq("a", 4), seq("b", 30)
    s.add(a)
    run_step(s, s.schedule())  # a prefilled
    s.add(b)
    out = s.schedule()
    assert [(c.seq.request_id, c.num_tokens) for c in out.chunks] == [("a", 1), ("b", 11)]


def test_prefill_chunk_cap_leaves_room_for_others() -> None:
    s = make(max_num_batched_tokens=32, max_num_seqs=4, max_prefill_chunk_tokens=8, max_model_len=128)
    s.add(seq("a", 20))
    s.add(seq("b", 20))
    out = s.schedule()
    assert [(c.seq.request_id, c.num_tokens) for c in out.chunks] == [("a", 8), ("b", 8)]


def test_max_num_seqs_limits_admission() -> None:
    s = make(max_num_batched_tokens=64, max_num_seqs=2, max_model_len=128)
    for i in range(3):
        s.add(seq(f"r{i}", 4))
    out = s.schedule()
    assert len(out.chunks) == 2 and len(s.waiting) == 1


def test_preemption_frees_the_newest_and_recomputes_it() -> None:
    # 6 blocks of 4 tokens; two 12-token prompts take 3 blocks each; their 13th token needs a 4th
    s = make(num_blocks=6, block_size=4, max_num_batched_tokens=32, max_num_seqs=4, max_model_len=64)
    a, b = seq("a", 12, max_tokens=10), seq("b", 12, max_tokens=10)
    s.add(a)
    s.add(b)
    run_step(s, s.schedule())  # both prefilled and sampled once: 3 blocks each
    assert s.blocks.num_free_blocks == 0
    out = s.schedule()  # a needs a 4th block: b (newest) is preempted
    assert out.preempted == ("b",)
    assert [c.seq.request_id for c in out.chunks] == ["a"]
    assert b.status is SequenceStatus.WAITING and b.num_computed_tokens == 0 and b.num_preemptions == 1
    assert s.waiting[0] is b and not s.blocks.has("b")
    run_step(s, out)
    # b comes back and recomputes prompt + its first output token once a finishes
    while not a.is_finished:
        run_step(s, s.schedule())
    out = s.schedule()
    assert [(c.seq.request_id, c.start, c.num_tokens) for c in out.chunks] == [("b", 0, 13)]
    s.blocks.check_invariants()


def test_a_lone_sequence_that_cannot_grow_preempts_itself() -> None:
    s = make(num_blocks=2, block_size=4, max_num_batched_tokens=16, max_num_seqs=2, max_model_len=8)
    a = seq("a", 7, max_tokens=1)
    s.add(a)
    run_step(s, s.schedule())
    assert a.is_finished  # max_tokens=1 finishes at the first token
    b = seq("b", 4, max_tokens=4)
    c = seq("c", 4, max_tokens=4)
    s.add(b)
    s.add(c)
    run_step(s, s.schedule())  # 2 x 5 tokens > 2 blocks... b fits 1 block (4 tokens) then needs 2
    s.blocks.check_invariants()
    for _ in range(20):
        out = s.schedule()
        if out.is_empty and not s.running and not s.waiting:
            break
        run_step(s, out)
    assert b.is_finished and c.is_finished
    assert s.blocks.num_used_blocks == 0


def test_imports_reserve_blocks_then_run_with_the_prompt_computed() -> None:
    s = make(num_blocks=4, block_size=4, max_num_batched_tokens=16, max_num_seqs=4, max_model_len=16)
    a = seq("a", 8, max_tokens=4)
    a.token_ids.append(99)  # the first token, sampled by prefill
    b = seq("b", 9, max_tokens=4)
    b.token_ids.append(98)
    s.add_import(a)
    s.add_import(b)
    assert [x.request_id for x in s.admit_imports()] == ["a"]  # b needs 3 blocks, 2 are left
    assert s.blocks.num_used_blocks == 2
    assert s.schedule().is_empty  # nothing runs while KV is in flight
    assert s.finish_import("a") is a
    out = s.schedule()
    assert [(c.seq.request_id, c.start, c.num_tokens, c.samples) for c in out.chunks] == [("a", 8, 1, True)]
    assert s.admit_imports() == []  # a grew into a third block: b still does not fit
    assert s.fail_import("zzz") is None


def test_admit_imports_in_order_when_blocks_free_up() -> None:
    s = make(num_blocks=4, block_size=4, max_num_batched_tokens=16, max_num_seqs=4, max_model_len=16)
    a, b = seq("a", 12, max_tokens=4), seq("b", 4, max_tokens=4)
    for x in (a, b):
        x.token_ids.append(5)
        s.add_import(x)
    assert [x.request_id for x in s.admit_imports()] == ["a", "b"]
    assert s.fail_import("a") is a and a.finish_reason is FinishReason.ERROR
    assert s.blocks.num_used_blocks == 1


def test_cancel_frees_blocks_from_every_state() -> None:
    s = make(num_blocks=16, block_size=4, max_num_batched_tokens=8, max_num_seqs=8, max_model_len=64)
    running, waiting, importing, pending = (
        seq("run", 6),
        seq("wait", 6),
        seq("imp", 6),
        seq("pend", 52, max_tokens=4),
    )
    s.add(running)
    run_step(s, s.schedule())
    s.add(waiting)
    for x in (importing, pending):
        x.token_ids.append(1)
        s.add_import(x)
    s.admit_imports()
    assert "imp" in s.importing and s.pending_imports[0] is pending  # 13 blocks do not fit in 12
    for x in (running, waiting, importing, pending):
        assert s.cancel(x.request_id) is x
        assert x.finish_reason is FinishReason.CANCELLED
    assert s.cancel("run") is None
    assert s.blocks.num_used_blocks == 0 and s.num_unfinished == 0
    assert s.finish_import("imp") is None  # a pull finishing after the cancel is ignored


def test_requests_that_can_never_fit_are_rejected_with_numbers() -> None:
    s = make(num_blocks=4, block_size=4, max_num_batched_tokens=16, max_num_seqs=4, max_model_len=32)
    with pytest.raises(
        EngineRequestError, match=r"max_tokens: 20 prompt \+ 16 max_tokens = 36 exceeds max_model_len 32"
    ):
        s.add(seq("a", 20, max_tokens=16))
    with pytest.raises(EngineRequestError, match="need 5 KV blocks, the rank has 4"):
        s.add(seq("b", 10, max_tokens=10))
    s.add(seq("c", 4))
    with pytest.raises(EngineRequestError, match="already being served"):
        s.add(seq("c", 4))
    with pytest.raises(EngineConfigError, match="max_num_batched_tokens"):
        SchedulerConfig(max_num_batched_tokens=4, max_num_seqs=8)


def test_random_traffic_keeps_invariants_and_ends_with_zero_blocks() -> None:
    rng = random.Random(1)
    s = make(num_blocks=24, block_size=4, max_num_batched_tokens=24, max_num_seqs=6, max_model_len=64)
    all_seqs = []
    for step in range(400):
        if step < 300 and rng.random() < 0.3:
            x = seq(f"r{step}", rng.randint(1, 30), max_tokens=rng.randint(1, 20))
            s.add(x)
            all_seqs.append(x)
        if rng.random() < 0.05 and s.running:
            s.cancel(rng.choice(s.running).request_id)
        out = s.schedule()
        assert out.num_tokens <= 24 and len(out.chunks) <= 6
        run_step(s, out)
        s.blocks.check_invariants()
        assert s.blocks.num_used_blocks == sum(s.blocks.num_blocks_of(x.request_id) for x in s.running)
    assert all(x.is_finished for x in all_seqs)
    assert s.blocks.num_used_blocks == 0
