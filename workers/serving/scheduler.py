"""Continuous-batching scheduler of one DP rank (no torch).

Every step, each scheduled sequence computes a run of its uncomputed tokens: a decode sequence
has one, a prompt has many and is chunked to the token budget (chunked prefill), and a sequence
preempted earlier recomputes what it lost. Decode tokens and prefill chunks share one batch.

Policy:
1. Running sequences first, oldest first. A sequence that cannot get the blocks it needs
   preempts the newest running sequence (its blocks are freed and it goes back to the head of the
   queue to be recomputed) until it fits, or preempts itself if it is the newest.
2. Then queued sequences, first come first served, while the budget, `max_num_seqs` and free blocks
   allow. A sequence is admitted on the blocks its first chunk needs now, never on its
   `max_tokens`; admissions leave a watermark free (`reserve_blocks`, at least 1% of the cache, as
   vLLM does) for running sequences to grow into. Nothing new is admitted in a step that preempted.
   A preempted sequence keeps the tokens it emitted and recomputes them (`num_preemptions` counts
   every preemption since the rank started).
3. Sequences arriving with KV from prefill (`add_import`) get blocks reserved in arrival order
   (`admit_imports`), wait while the KV is pulled, then join the running set with their prompt
   computed (`finish_import`).
Cancellation frees a sequence's blocks wherever it is.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from moeplane.workers.serving.block_manager import BlockManager
from moeplane.workers.serving.config import SchedulerConfig
from moeplane.workers.serving.sequence import EngineRequestError, FinishReason, Sequence, SequenceStatus


@dataclass(frozen=True)
class ScheduledChunk:
    """Tokens [start, start + num_tokens) of `seq` are computed this step."""

    seq: Sequence
    start: int
    num_tokens: int

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    @property
    def samples(self) -> bool:
        """The chunk reaches the sequence's last token, so its logits give the next token."""
        return self.end == self.seq.num_tokens


@dataclass(frozen=True)
class SchedulerOutput:
    chunks: tuple[ScheduledChunk, ...]
    preempted: tuple[str, ...]

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        self.config = config
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.pending_imports: deque[Sequence] = deque()
        self.importing: dict[str, Sequence] = {}
        # Free blocks admissions leave for running sequences to grow into.
        self.watermark_blocks = max(config.reserve_blocks, blocks.num_blocks // 100)
        self.num_preemptions = 0

    # ---- admission ----------------------------------------------------------------------------
    def check_fits(self, seq: Sequence) -> None:
        """Reject a request that could never be served here, naming the field and the numbers."""
        limit = self.config.max_model_len
        total = seq.num_prompt_tokens + seq.sampling.max_tokens
        if seq.num_prompt_tokens >= limit:
            raise EngineRequestError(
                "prompt_token_ids",
                f"{seq.num_prompt_tokens} prompt tokens leave no room in max_model_len {limit}",
            )
        if total > limit:
            raise EngineRequestError(
                "max_tokens",
                f"{seq.num_prompt_tokens} prompt + {seq.sampling.max_tokens} max_tokens = {total} exceeds "
                f"max_model_len {limit}",
            )
        need = self.blocks.blocks_for(total)
        if need > self.blocks.num_blocks:
            raise EngineRequestError(
                "max_tokens", f"{total} tokens need {need} KV blocks, the rank has {self.blocks.num_blocks}"
            )
        if self.find(seq.request_id) is not None:
            raise EngineRequestError("request_id", f"{seq.request_id!r} is already being served")

    def add(self, seq: Sequence) -> None:
        """Queue a sequence to compute from scratch (a prompt, on prefill or aggregated ranks)."""
        self.check_fits(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_computed_tokens = 0
        self.waiting.append(seq)

    def add_import(self, seq: Sequence) -> None:
        """Queue a sequence whose first `num_prompt_tokens` KV comes from a prefill rank."""
        self.check_fits(seq)
        seq.status = SequenceStatus.WAITING_FOR_KV
        self.pending_imports.append(seq)

    def admit_imports(self) -> list[Sequence]:
        """Reserve blocks for queued imports in order while they fit; returns those admitted."""
        admitted = []
        while self.pending_imports and len(self.running) + len(self.importing) < self.config.max_num_seqs:
            seq = self.pending_imports[0]
            if not self.blocks.can_allocate(seq.num_prompt_tokens, self._watermark()):
                break
            self.pending_imports.popleft()
            self.blocks.allocate(seq.request_id, seq.num_prompt_tokens)
            self.importing[seq.request_id] = seq
            admitted.append(seq)
        return admitted

    def finish_import(self, request_id: str) -> Sequence | None:
        """The KV arrived: the sequence runs with its prompt computed. None if it was cancelled."""
        seq = self.importing.pop(request_id, None)
        if seq is None:
            return None
        seq.num_computed_tokens = seq.num_prompt_tokens
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        return seq

    def fail_import(self, request_id: str) -> Sequence | None:
        seq = self.importing.pop(request_id, None)
        if seq is not None:
            self.blocks.free(request_id)
            self._finish_state(seq, FinishReason.ERROR)
        return seq

    # ---- the step -----------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        cap = self.config.max_prefill_chunk_tokens or budget
        chunks: list[ScheduledChunk] = []
        preempted: list[str] = []

        # 1. running sequences, oldest first; preempt the newest when blocks run out
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            n = min(seq.num_uncomputed_tokens, budget, cap)
            target = seq.num_computed_tokens + n
            while not self.blocks.can_grow(seq.request_id, target):
                victim = self.running.pop()
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is seq:
                    break
            else:
                self.blocks.grow(seq.request_id, target)
                chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, n))
                budget -= n
                index += 1

        # 2. queued sequences, first come first served
        while (
            not preempted
            and self.waiting
            and budget > 0
            and len(self.running) + len(self.importing) < self.config.max_num_seqs
        ):
            seq = self.waiting[0]
            n = min(seq.num_uncomputed_tokens, budget, cap)
            if not self.blocks.can_allocate(n, self._watermark()):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq.request_id, n)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            chunks.append(ScheduledChunk(seq, 0, n))
            budget -= n
        return SchedulerOutput(tuple(chunks), tuple(preempted))

    def commit(self, output: SchedulerOutput) -> None:
        """The step ran: the scheduled tokens now have KV in the cache."""
        for chunk in output.chunks:
            if chunk.seq.status is SequenceStatus.RUNNING:
                chunk.seq.num_computed_tokens = chunk.end

    def _watermark(self) -> int:
        """Blocks an admission leaves free: none on an idle rank, so any request that fits runs."""
        return self.watermark_blocks if self.running or self.importing else 0

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.free(seq.request_id)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)

    # ---- leaving --------------------------------------------------------------------------------
    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """A running sequence is done: free its blocks."""
        self.running.remove(seq)
        self.blocks.free(seq.request_id)
        self._finish_state(seq, reason)

    def detach(self, seq: Sequence) -> list[int]:
        """Remove a running sequence but keep its blocks (prefill hands them to a KV lease).

        Returns the block table; the caller frees it with `blocks.free(request_id)` later.
        """
        self.running.remove(seq)
        self._finish_state(seq, FinishReason.STOP if seq.finish_reason is None else seq.finish_reason)
        return self.blocks.block_table(seq.request_id)

    def cancel(self, request_id: str) -> Sequence | None:
        """Drop a request wherever it is and free its blocks; None if it is not here."""
        seq = self.find(request_id)
        if seq is None:
            return None
        if seq in self.running:
            self.running.remove(seq)
        elif seq.request_id in self.importing:
            del self.importing[seq.request_id]
        elif seq in self.waiting:
            self.waiting.remove(seq)
        else:
            self.pending_imports.remove(seq)
        if self.blocks.has(request_id):
            self.blocks.free(request_id)
        self._finish_state(seq, FinishReason.CANCELLED)
        return seq

    @staticmethod
    def _finish_state(seq: Sequence, reason: FinishReason) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    # ---- queries ------------------------------------------------------------------------------
    def find(self, request_id: str) -> Sequence | None:
        if request_id in self.importing:
            return self.importing[request_id]
        for queue in (self.running, self.waiting, self.pending_imports):
            for seq in queue:
                if seq.request_id == request_id:
                    return seq
        return None

    @property
    def num_unfinished(self) -> int:
        return len(self.running) + len(self.waiting) + len(self.pending_imports) + len(self.importing)

    @property
    def has_work(self) -> bool:
        """Whether a step would compute something (imports in flight compute nothing yet)."""
        return bool(self.running or self.waiting)
