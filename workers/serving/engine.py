"""`RankEngine`: one DP rank of a prefill or decode group. `step()` is schedule -> run -> postprocess.

An ordinary in-process object (vLLM v1 style); `actor.RankActor` is the Ray wrapper around it.
Every rank of an EP group calls `step()` together, since MoE layers are collectives: ranks first
agree (one all-reduce) whether anyone has tokens to compute, and an idle rank then runs the
forward with an empty batch.

Prefill role: a request whose prompt is computed samples its first token, then leaves the
scheduler; its blocks pass to a KV lease (owner `transfer_id`) offered on the rank's transport, and
the output carries the handle. The blocks come back when the decode side acks or the lease
expires. Decode role: a request with a handle gets blocks reserved, its KV pulled in the
background (the transport's event loop), verified, committed into the cache, and then decodes.
A decode request without a handle computes its prompt here (aggregated serving).
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from moeplane.workers.eplb.counter import LoadWindow
from moeplane.workers.kv.layout import TransferHandle
from moeplane.workers.kv.transport import KVTransport, ReleaseReason
from moeplane.workers.model.metadata import SeqStep, build_metadata
from moeplane.workers.model.runner import EPModelRunner, empty_metadata
from moeplane.workers.placement import Placement
from moeplane.workers.serving.block_manager import BlockManager
from moeplane.workers.serving.config import EngineConfig, EngineConfigError, Role
from moeplane.workers.serving.kv_io import PagedKVSink, PagedKVSource
from moeplane.workers.serving.logprobs import TokenLogprobs
from moeplane.workers.serving.loop import LoopThread
from moeplane.workers.serving.sampling import Sampler, SampleRow, extend_prompt_logprobs
from moeplane.workers.serving.scheduler import Scheduler, SchedulerOutput
from moeplane.workers.serving.sequence import EngineRequestError, ErrorKind, FinishReason, SamplingParams
from moeplane.workers.serving.sequence import Sequence as Seq
from moeplane.workers.serving.stopping import StopChecker
from moeplane.workers.serving.text import TokenDecoder


@dataclass(frozen=True)
class NewRequest:
    """A request for this rank. Decode requests may carry the prefill's first token and KV handle."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    first_token_id: int | None = None
    kv: TransferHandle | None = None


@dataclass(frozen=True)
class StepInput:
    """What one step brings: new requests, cancellations, and for EPLB a placement to start
    moving to (every rank gets the same one on the same step) and whether to report the rank's
    load window."""

    new: tuple[NewRequest, ...] = ()
    cancels: tuple[str, ...] = ()
    placement: Placement | None = None
    collect_load: bool = False


@dataclass(frozen=True)
class TokenOutput:
    """What one request produced in one step (or why it ended)."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    num_output_tokens: int
    finish_reason: FinishReason | None = None
    error: str = ""
    error_kind: ErrorKind | None = None
    kv: TransferHandle | None = None  # prefill: where the decode side pulls the prompt's KV
    # Sampling extras (issue 14): one entry per token in token_ids when the request asked for
    # logprobs; prompt tokens 1.. with the request's first output token when it asked for
    # prompt_logprobs; the stop string or stop token id that ended it (None for EOS or length).
    logprobs: tuple[TokenLogprobs, ...] = ()
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None
    stop_reason: str | int | None = None


@dataclass(frozen=True)
class RankStats:
    rank: int
    num_blocks: int
    num_used_blocks: int
    num_leased_blocks: int
    num_running: int
    num_waiting: int
    num_importing: int
    num_steps: int
    num_preemptions: int = 0  # since the rank started

    @property
    def num_free_blocks(self) -> int:
        return self.num_blocks - self.num_used_blocks


@dataclass(frozen=True)
class StepResult:
    outputs: tuple[TokenOutput, ...]
    stats: RankStats
    num_computed_tokens: int  # this rank's tokens in this step (0 when idle)
    group_ran_forward: bool
    placement_version: int = 0  # the placement every MoE layer ran on (during a move: the old one)
    moving: bool = False  # a placement switch is still in progress (more batches to go)
    load_window: LoadWindow | None = None  # when asked for (`collect_load`) and counting is on


@dataclass
class _Import:
    seq: Seq
    handle: TransferHandle
    sink: PagedKVSink | None = None  # set once blocks are reserved
    future: Future | None = None


class RankEngine:
    def __init__(
        self,
        config: EngineConfig,
        runner: EPModelRunner,
        kv_cache: list[torch.Tensor],
        tokenizer: TokenDecoder,
        transport: KVTransport | None = None,
        loop: LoopThread | None = None,
    ) -> None:
        if (transport is None) != (loop is None):
            raise EngineConfigError("a KV transport needs the event loop it runs on, and vice versa")
        self.config = config
        self.runner = runner
        self.kv_cache = kv_cache
        self.tokenizer = tokenizer
        # Every id that ends a sequence (a checkpoint may have several: generation_config.json).
        self._eos_ids: frozenset[int] = frozenset(getattr(tokenizer, "eos_ids", None) or {tokenizer.eos_id})
        self.transport = transport
        self.loop = loop
        self.blocks = BlockManager(config.num_blocks, config.block_size)
        self.scheduler = Scheduler(config.scheduler, self.blocks)
        self.sampler = Sampler(self._eos_ids, config.sampler_seed)
        self.num_steps = 0
        # Each request's text and stop rules.
        self._stops = StopChecker(tokenizer, config.scheduler.max_model_len, self._eos_ids)
        self._imports: dict[str, _Import] = {}
        self._done_imports: deque[str] = deque()
        self._leased: dict[str, int] = {}  # transfer id -> blocks
        self._releases: deque[str] = deque()
        self._lock = threading.Lock()
        if config.expert_load_window_s is not None:
            runner.enable_load_counting(
                config.expert_load_buckets, config.expert_load_window_s / config.expert_load_buckets
            )

    @property
    def rank(self) -> int:
        return self.runner.rank

    # ---- the step -----------------------------------------------------------------------------
    def step(self, inp: StepInput = StepInput()) -> StepResult:
        with self._lock:
            self._drain_releases()
            outputs: list[TokenOutput] = []
            for req in inp.new:
                self._add(req, outputs)
            for rid in inp.cancels:  # after the adds: a request may be cancelled as it arrives
                self._cancel(rid, outputs)
            self._start_imports(outputs)
            self._finish_imports(outputs)
            self._move_experts(inp.placement)
            sched = self.scheduler.schedule()
            run = self._group_has_work(not sched.is_empty)
            if run:
                logits = self._forward(sched)
                self.scheduler.commit(sched)
                self._postprocess(sched, logits, outputs)
                self.num_steps += 1
            self._drain_releases()
            runner = self.runner
            window = runner.load_window() if inp.collect_load else None
            return StepResult(
                tuple(outputs), self._stats(), sched.num_tokens, run,
                runner.placement_version, runner.is_moving, window,
            )

    def _move_experts(self, target: Placement | None) -> None:
        """EPLB between forward passes: start a switch to `target`, then move one batch of layers
        per step. Every rank runs this on the same step (collectives inside), before the forward."""
        if target is not None:
            self.runner.begin_placement(target, self.config.move_layers_per_step)
        if self.runner.is_moving:
            self.runner.advance_placement()

    def _group_has_work(self, mine: bool) -> bool:
        """All ranks of the group agree whether to run a forward (MoE layers are collectives)."""
        comm = self.runner.comm
        if comm.world_size == 1:
            return mine
        flag = torch.tensor([1 if mine else 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=comm.group)
        return bool(flag.item())

    def _forward(self, sched: SchedulerOutput) -> torch.Tensor:
        device = self.runner.device
        if sched.is_empty:
            empty = torch.empty(0, dtype=torch.int64, device=device)
            return self.runner.forward(empty, empty_metadata(device), None)
        steps, ids = [], []
        for chunk in sched.chunks:
            seq = chunk.seq
            ids.extend(seq.token_ids[chunk.start : chunk.end])
            table = tuple(self.blocks.block_table(seq.request_id))
            steps.append(SeqStep(chunk.start, chunk.num_tokens, table, chunk.samples))
        meta = build_metadata(steps, self.config.block_size, device)
        input_ids = torch.tensor(ids, dtype=torch.int64, device=device)
        if not any(c.seq.sampling.prompt_logprobs is not None for c in sched.chunks):
            return self.runner.forward(input_ids, meta, self.kv_cache)
        # Issue 14: prompt logprobs need the logits of prompt positions too (the same collective
        # forward; the extra logits are local to this rank).
        hidden = self.runner.forward_hidden(input_ids, meta, self.kv_cache)
        with torch.inference_mode():
            offset = 0
            for chunk in sched.chunks:
                if chunk.seq.sampling.prompt_logprobs is not None:
                    rows = hidden[offset : offset + chunk.num_tokens]
                    extend_prompt_logprobs(chunk.seq, chunk.start, chunk.end, rows, self.runner.model.logits)
                offset += chunk.num_tokens
            return self.runner.model.logits(hidden[meta.logits_indices])

    def _postprocess(self, sched: SchedulerOutput, logits: torch.Tensor, outputs: list[TokenOutput]) -> None:
        sampled = [c.seq for c in sched.chunks if c.samples]
        if not sampled:
            return
        rows = [
            SampleRow(s.sampling, s.token_ids[: s.num_true_prompt_tokens], s.all_output_token_ids)
            for s in sampled
        ]
        for seq, pick in zip(sampled, self.sampler(logits, rows), strict=True):
            token = pick.token_id
            seq.token_ids.append(token)
            step = self._stops.check(seq, token)
            reason, text = step.finish_reason, step.text
            # The prompt's logprobs go out with the first token this rank samples for it.
            first = seq.num_output_tokens == 1 and seq.sampling.prompt_logprobs is not None
            if reason is not None:
                self.scheduler.finish(seq, reason)
                self._stops.drop(seq.request_id)
                out = TokenOutput(seq.request_id, (token,), text, seq.num_output_tokens, reason)
            elif self.config.role is Role.PREFILL:
                out = self._hand_off(seq, token, text)
            else:
                out = TokenOutput(seq.request_id, (token,), text, seq.num_output_tokens)
            outputs.append(replace(
                out, logprobs=() if pick.logprobs is None else (pick.logprobs,),
                prompt_logprobs=tuple(seq.prompt_logprobs) if first else None, stop_reason=step.stop_reason,
            ))

    # ---- prefill: hand the KV to a lease -----------------------------------------------------
    def _hand_off(self, seq: Seq, token: int, text: str) -> TokenOutput:
        if self.transport is None:
            raise EngineConfigError("a prefill rank needs a KV transport")
        rid = seq.request_id
        slots = torch.tensor(self.blocks.slot_mapping(rid, 0, seq.num_prompt_tokens), dtype=torch.int64)
        source = PagedKVSource(self.kv_cache, slots)
        self.scheduler.detach(seq)
        self._stops.drop(rid)
        transfer_id = f"{rid}/{uuid.uuid4().hex[:12]}"
        self.blocks.rename(rid, transfer_id)
        self._leased[transfer_id] = self.blocks.num_blocks_of(transfer_id)
        handle = self.transport.offer(
            transfer_id, source.layout, source, self.config.lease_s, self._on_release
        )
        return TokenOutput(rid, (token,), text, seq.num_output_tokens, kv=handle)

    def _on_release(self, transfer_id: str, reason: ReleaseReason) -> None:
        """Called on the transport's loop: free now if the engine is idle, else after its step."""
        self._releases.append(transfer_id)
        if self._lock.acquire(blocking=False):
            try:
                self._drain_releases()
            finally:
                self._lock.release()

    def _drain_releases(self) -> None:
        while self._releases:
            tid = self._releases.popleft()
            if self._leased.pop(tid, None) is not None:
                self.blocks.free(tid)

    # ---- decode: pull KV in the background ------------------------------------------------------
    def _start_imports(self, outputs: list[TokenOutput]) -> None:
        for seq in self.scheduler.admit_imports():
            imp = self._imports[seq.request_id]
            slots = torch.tensor(
                self.blocks.slot_mapping(seq.request_id, 0, seq.num_prompt_tokens), dtype=torch.int64
            )
            try:
                sink = imp.sink = PagedKVSink(self.kv_cache, slots)
                sink.layout.check_compatible(imp.handle.layout)
            except Exception as exc:
                self._fail_import(
                    seq.request_id, f"KV of {seq.request_id} does not fit this rank: {exc}", outputs
                )
                continue
            assert self.transport is not None and self.loop is not None
            imp.future = self.loop.submit(
                self.transport.pull(imp.handle, sink, self.config.kv_pull_timeout_s)
            )
            imp.future.add_done_callback(self._import_done(seq.request_id))

    def _import_done(self, rid: str) -> Callable[[Future], None]:
        """A done-callback (runs on the transport's loop) queueing `rid` for the next step."""
        return lambda _future: self._done_imports.append(rid)

    def _finish_imports(self, outputs: list[TokenOutput]) -> None:
        while self._done_imports:
            rid = self._done_imports.popleft()
            imp = self._imports.pop(rid, None)
            if imp is None or imp.future is None or imp.future.cancelled():
                continue  # cancelled meanwhile: its blocks are already free
            exc = imp.future.exception()
            if exc is not None:
                self._imports[rid] = imp  # so _fail_import finds it
                self._fail_import(rid, f"KV transfer failed: {exc}", outputs)
                continue
            assert imp.sink is not None
            imp.sink.commit()
            self.scheduler.finish_import(rid)

    def _fail_import(self, rid: str, error: str, outputs: list[TokenOutput]) -> None:
        self._imports.pop(rid, None)
        seq = self.scheduler.fail_import(rid)
        self._stops.drop(rid)
        n = seq.num_output_tokens if seq is not None else 0
        outputs.append(TokenOutput(rid, (), "", n, FinishReason.ERROR, error, ErrorKind.KV_TRANSFER))

    # ---- requests in and out --------------------------------------------------------------------
    def _add(self, req: NewRequest, outputs: list[TokenOutput]) -> None:
        try:
            seq = self._sequence(req)
            if req.kv is not None:
                if self.transport is None:
                    raise EngineRequestError("kv", "this rank has no KV transport to pull with")
                self.scheduler.add_import(seq)
                self._imports[req.request_id] = _Import(seq, req.kv)
            else:
                self.scheduler.add(seq)
            self._stops.add(seq)  # a first token from the prefill counts as released text
        except EngineRequestError as exc:
            outputs.append(
                TokenOutput(
                    req.request_id, (), "", 0, FinishReason.ERROR, str(exc), ErrorKind.INVALID_REQUEST
                )
            )

    def _sequence(self, req: NewRequest) -> Seq:
        vocab = self.runner.arch.vocab_size
        ids = list(req.prompt_token_ids)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise EngineRequestError(
                "prompt_token_ids", f"ids {bad[:5]} are outside the vocabulary of {vocab}"
            )
        if req.kv is not None and req.first_token_id is None:
            raise EngineRequestError("first_token_id", "required with a KV handle")
        if req.kv is not None and req.kv.layout.num_tokens != len(ids):
            raise EngineRequestError(
                "kv", f"the handle holds KV of {req.kv.layout.num_tokens} tokens, the prompt has {len(ids)}"
            )
        req.sampling.check_vocab(vocab)
        if req.first_token_id is not None:
            if not 0 <= req.first_token_id < vocab:
                raise EngineRequestError("first_token_id", f"{req.first_token_id} is outside the vocabulary")
            ids.append(req.first_token_id)
        return Seq(req.request_id, ids, len(req.prompt_token_ids), req.sampling)

    def _cancel(self, rid: str, outputs: list[TokenOutput]) -> None:
        imp = self._imports.pop(rid, None)
        if imp is not None and imp.future is not None:
            imp.future.cancel()  # the pull writes only its staging buffer, never the cache
        seq = self.scheduler.cancel(rid)
        self._stops.drop(rid)
        if seq is not None:
            outputs.append(TokenOutput(rid, (), "", seq.num_output_tokens, FinishReason.CANCELLED))
        if self.transport is not None:  # cancelled after its hand-off: nobody will pull the KV
            for tid in [t for t in self._leased if t.startswith(f"{rid}/")]:
                self.transport.release(tid, ReleaseReason.CANCELLED)

    # ---- introspection --------------------------------------------------------------------------
    def _stats(self) -> RankStats:
        s = self.scheduler
        return RankStats(
            rank=self.rank,
            num_blocks=self.blocks.num_blocks,
            num_used_blocks=self.blocks.num_used_blocks,
            num_leased_blocks=sum(self._leased.values()),
            num_running=len(s.running),
            num_waiting=len(s.waiting),
            num_importing=len(s.importing) + len(s.pending_imports),
            num_steps=self.num_steps,
            num_preemptions=s.num_preemptions,
        )

    def stats(self) -> RankStats:
        with self._lock:
            self._drain_releases()
            return self._stats()

    def check_invariants(self) -> None:
        with self._lock:
            self.blocks.check_invariants()
            owners = set(self.blocks.owners())
            expected = {s.request_id for s in self.scheduler.running} | set(self.scheduler.importing)
            expected |= set(self._leased)
            if owners != expected:
                raise AssertionError(f"block owners {sorted(owners)} != live requests {sorted(expected)}")


def pending_count(stats: Sequence[RankStats]) -> int:
    return sum(s.num_running + s.num_waiting + s.num_importing for s in stats)
