"""Prefill and decode engines in one process (EP1 each): greedy tokens through the paged cache and
a real gRPC KV transfer equal the single-process reference; leases free blocks on ack."""

from __future__ import annotations

import time

import pytest
import torch
from moeplane.api.presets import model_preset
from moeplane.workers.kv.grpc_backend import GrpcKVTransport
from moeplane.workers.kv.transport import KVTransport
from moeplane.workers.model import EPModelRunner, RandomWeights, load_tokenizer
from moeplane.workers.model.reference import reference_greedy
from moeplane.workers.model.weights import full_state_dict
from moeplane.workers.serving.config import Role, SchedulerConfig
from moeplane.workers.serving.engine import EngineConfig, NewRequest, RankEngine, StepInput, TokenOutput
from moeplane.workers.serving.loop import LoopThread
from moeplane.workers.serving.sequence import FinishReason, SamplingParams

pytestmark = pytest.mark.integration

SEED = 7
ARCH = model_preset("tiny")


@pytest.fixture(scope="module")
def loop():
    lt = LoopThread()
    yield lt
    lt.close()


def make_engine(
    role: Role,
    loop: LoopThread,
    block_size: int,
    lease_s: float = 30.0,
    device: str = "cpu",
    backend: str = "grpc",
    **sched,
) -> RankEngine:
    torch.set_num_threads(1)
    runner = EPModelRunner(ARCH, SEED, device=device)
    config = EngineConfig(
        role=role,
        num_blocks=64,
        block_size=block_size,
        lease_s=lease_s,
        scheduler=SchedulerConfig(**({"max_num_batched_tokens": 64, "max_num_seqs": 8} | sched)),
    )
    if backend == "mooncake":
        from moeplane.workers.kv.mooncake_backend import MooncakeKVTransport

        transport: KVTransport = MooncakeKVTransport()
    else:
        transport = GrpcKVTransport(chunk_bytes=256 * 1024)
    loop.run(transport.start())
    return RankEngine(
        config, runner, runner.allocate_kv_cache(64, block_size), load_tokenizer("bytes", ARCH), transport,
        loop,
    )


def drive(
    engine: RankEngine, inp: StepInput, until: set[str], max_steps: int = 400, wait_s: float = 60.0
) -> dict[str, list[TokenOutput]]:
    """Step until every request in `until` finished or handed off, within `max_steps` forward
    passes (a count that does not depend on the machine); steps that only wait for KV pulls do not
    count, they are bounded by the generous `wait_s` instead."""
    got: dict[str, list[TokenOutput]] = {}
    finished: set[str] = set()
    forward = 0
    deadline = time.monotonic() + wait_s
    while forward < max_steps:
        result = engine.step(inp)
        inp = StepInput()
        for out in result.outputs:
            got.setdefault(out.request_id, []).append(out)
            if out.finish_reason is not None or out.kv is not None:
                finished.add(out.request_id)
        if until <= finished:
            return got
        if result.group_ran_forward:
            forward += 1
        else:
            assert time.monotonic() < deadline, f"KV pulls not done within {wait_s}s: {until - finished}"
            time.sleep(0.005)  # waiting for a KV pull
    raise AssertionError(f"not finished after {max_steps} forward steps: {until - finished}")


def mooncake_missing() -> str:
    from moeplane.workers.kv.mooncake_backend import MooncakeUnavailable, import_engine

    try:
        import_engine()
    except MooncakeUnavailable as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize(
    ("device", "backend"),
    [
        ("cpu", "grpc"),
        pytest.param(
            "cpu",
            "mooncake",
            marks=pytest.mark.skipif(bool(mooncake_missing()), reason=f"Mooncake: {mooncake_missing()}"),
        ),
        pytest.param("cuda", "grpc", marks=pytest.mark.gpu),
    ],
)
def test_disaggregated_greedy_equals_reference(loop: LoopThread, device: str, backend: str) -> None:
    """On CUDA the KV leaves the prefill's device cache and lands in the decode's device cache."""
    prefill = make_engine(
        Role.PREFILL,
        loop,
        block_size=4,
        device=device,
        backend=backend,
        max_num_batched_tokens=16,
        max_num_seqs=4,
    )
    decode = make_engine(Role.DECODE, loop, block_size=8, device=device, backend=backend)
    tok = load_tokenizer("bytes", ARCH)
    prompts = {
        f"r{i}": tok.encode(text) for i, text in enumerate(["hello", "a much longer prompt, chunked", "x"])
    }
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    first = drive(
        prefill,
        StepInput(new=tuple(NewRequest(r, tuple(p), greedy) for r, p in prompts.items())),
        set(prompts),
    )
    assert prefill.stats().num_leased_blocks > 0
    handoffs = []
    for rid, outs in first.items():
        (out,) = outs
        assert out.kv is not None and out.num_output_tokens == 1
        handoffs.append(NewRequest(rid, tuple(prompts[rid]), greedy, out.token_ids[0], out.kv))
    rest = drive(decode, StepInput(new=tuple(handoffs)), set(prompts))
    weights = full_state_dict(ARCH, RandomWeights(ARCH, SEED))
    for rid, prompt in prompts.items():
        tokens = [*first[rid][0].token_ids, *(t for o in rest[rid] for t in o.token_ids)]
        assert rest[rid][-1].finish_reason is FinishReason.LENGTH
        assert tokens == reference_greedy(ARCH, weights, prompt, 12), rid
    # every pull acked: the prefill's leases are gone and its blocks are back
    deadline = time.monotonic() + 30  # a generous bound: the release is an event
    while prefill.stats().num_used_blocks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert prefill.stats().num_used_blocks == 0 and prefill.transport.num_leases == 0
    assert decode.stats().num_used_blocks == 0
    prefill.check_invariants()
    decode.check_invariants()


def test_expired_lease_frees_prefill_blocks_and_a_late_pull_fails_cleanly(loop: LoopThread) -> None:
    from moeplane.workers.kv.grpc_backend import run_expiry
    from moeplane.workers.serving.sequence import ErrorKind

    prefill = make_engine(Role.PREFILL, loop, block_size=4, lease_s=0.3)
    decode = make_engine(Role.DECODE, loop, block_size=4)
    expiry = loop.submit(run_expiry(prefill.transport, interval_s=0.05))
    try:
        sampling = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
        prompt = tuple(load_tokenizer("bytes", ARCH).encode("nobody will pull this"))
        (out,) = drive(prefill, StepInput(new=(NewRequest("lost", prompt, sampling),)), {"lost"})["lost"]
        assert out.kv is not None and prefill.stats().num_used_blocks == 6  # 22 tokens / 4
        deadline = time.monotonic() + 30  # a generous bound: the release is an event
        while prefill.stats().num_used_blocks and time.monotonic() < deadline:
            time.sleep(0.05)
        assert prefill.stats().num_used_blocks == 0 and prefill.transport.num_leases == 0
        prefill.check_invariants()
        # the decode side arrives too late: a clean per-request error, its reserved blocks come back
        late = NewRequest("lost", prompt, sampling, out.token_ids[0], out.kv)
        (err,) = drive(decode, StepInput(new=(late,)), {"lost"})["lost"]
        assert err.finish_reason is FinishReason.ERROR and err.error_kind is ErrorKind.KV_TRANSFER
        assert "NOT_FOUND" in err.error
        assert decode.stats().num_used_blocks == 0
        decode.check_invariants()
    finally:
        expiry.cancel()
