"""One request through the serving groups: route, prefill, decode, stream, retry, measure.

`Exchange` is a single request's run. The HTTP handler iterates `chunks()` under its request
timeout and then calls `finish(status)` exactly once, which records the request's metrics (to
Prometheus and the Redis stream). Leaving `chunks()` early, by cancellation (the client went
away), the timeout or an error, closes the decode stream, which cancels the request on the
decode group and frees its KV blocks; a prefill whose KV was never pulled is cancelled on its
prefill group.

Admission: every attempt gets its route from the `AdmissionQueue`: a request waits there (FIFO,
bounded) for a live decode group with KV blocks for its prompt, instead of being refused; 503 with
Retry-After only when the queue is full or the wait times out.

Failure rule: a request is never lost silently. A group that fails (UNAVAILABLE, or an error event
of kind GROUP_FAILED) is routed around for this request and suspected by the router until it
registers anew (its supervisor restarted it), and the request is tried again until its deadline; it
gives up after `max_attempts` attempts in a row that streamed no new token (a request that fails
every group it meets is not retried forever, one that makes progress is). If tokens were already
streamed, the retry prefills prompt + those tokens and resumes where it stopped, so the client sees
one uninterrupted stream with the same greedy tokens; it waits at the head of the queue for a live
group, until the request's deadline, if none is live. A KV transfer that failed is retried with a
fresh prefill on the same groups. Otherwise the request ends with an error message. Each migration
is one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from enum import StrEnum

from moeplane.workers.frontend.admission import AdmissionQueue
from moeplane.workers.frontend.backend import ClientPool, GroupClient, is_retryable
from moeplane.workers.frontend.errors import FrontendError, InvalidRequest, NoCapacity, UpstreamError
from moeplane.workers.frontend.metrics import FrontendMetrics, RequestSample
from moeplane.workers.frontend.router import (
    GroupRef,
    Inflight,
    RegistryCache,
    Reservation,
    Route,
    choose_route,
    ref,
)
from moeplane.workers.serving.client import WorkerControlError
from moeplane.workers.serving.limits import ServingLimits
from moeplane.workers.serving.logprobs import TokenLogprobs
from moeplane.workers.serving.sequence import ErrorKind, FinishReason, SamplingParams
from moeplane.workers.serving.text import TextStream, TokenDecoder

from moeplane.bus.request_metrics import RequestMetricsWriter, RequestRecord, RequestStatus

log = logging.getLogger(__name__)

CANCEL_RPC_TIMEOUT_S = 2.0


class Endpoint(StrEnum):
    COMPLETIONS = "completions"
    CHAT = "chat.completions"


@dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    model: str
    endpoint: Endpoint
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams


@dataclass(frozen=True)
class Chunk:
    """New output: text released by the group (stop strings already cut) and its token ids.

    With the request's `logprobs`, one TokenLogprobs per token id; with `prompt_logprobs`, the
    first chunk carries the prompt's (tokens 1..); a chunk that stopped on a stop string or stop
    token id names it in `stop_reason`."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprobs, ...] = ()
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None
    stop_reason: str | int | None = None


class _GroupFailed(Exception):
    """This attempt failed; the request may be retried. `group` is the run of the group that failed
    (None: no group's fault, e.g. a KV transfer that may work with a fresh prefill)."""

    def __init__(self, group: GroupRef | None, stage: str, message: str) -> None:
        message = message.splitlines()[0] if message else "failed"
        if group is None or message.startswith(f"group {group[0]}"):
            super().__init__(f"{stage} {message}")
        else:
            super().__init__(f"{stage} group {group[0]}: {message}")
        self.group = group
        self.stage = stage


@dataclass
class Timings:
    """Monotonic timestamps of one request, and the wall-clock arrival for the record."""

    arrived_at_s: float = field(default_factory=time.time)
    arrived_mono_s: float = field(default_factory=time.monotonic)
    dispatched_mono_s: float | None = None  # admitted: out of the frontend's queue
    worker_queue_s: float = 0.0  # reported by the prefill group: waiting on its step loop
    first_token_mono_s: float | None = None
    last_token_mono_s: float | None = None
    max_gap_s: float = 0.0
    num_output_tokens: int = 0

    def on_tokens(self, n: int) -> float | None:
        """Record `n` new tokens now; returns the per-token gap since the previous ones."""
        now = time.monotonic()
        gap = None
        if self.first_token_mono_s is None:
            self.first_token_mono_s = now
        elif self.last_token_mono_s is not None and n:
            gap = (now - self.last_token_mono_s) / n
            self.max_gap_s = max(self.max_gap_s, gap)
        self.last_token_mono_s = now
        self.num_output_tokens += n
        return gap


class Pipeline:
    """Shared by all requests of one frontend: the router's view, the clients and the sinks."""

    def __init__(
        self,
        cache: RegistryCache,
        clients: ClientPool,
        metrics: FrontendMetrics,
        writer: RequestMetricsWriter | None = None,
        max_attempts: int = 4,
        decoder: TokenDecoder | None = None,
        limits: ServingLimits | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.cache = cache
        self.clients = clients
        self.metrics = metrics
        self.writer = writer
        self.max_attempts = max_attempts
        self.limits = limits or ServingLimits()
        self.admission = AdmissionQueue(self.limits.max_queued_requests, self.limits.queue_timeout_s)
        cache.listeners.append(self.admission.wake)
        # Re-derives the text of a resumed request (see `Exchange._resumed_text`); None: trust the
        # groups' text, which can drop a character split across a failure.
        self.decoder = decoder
        self.inflight = Inflight()

    def open(self, req: GenerateRequest, timings: Timings | None = None) -> Exchange:
        return Exchange(self, req, timings or Timings())


class Exchange:
    def __init__(self, pipeline: Pipeline, req: GenerateRequest, timings: Timings) -> None:
        self.p = pipeline
        self.req = req
        self.t = timings
        self.output_ids: list[int] = []
        self.text_sent = ""
        self.finish_reason: FinishReason | None = None
        self.route: Route | None = None
        self.num_retries = 0
        self._finished = False
        self.p.metrics.in_flight.labels(model=req.model).inc()

    # ---- the run ----------------------------------------------------------------------------------
    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        """Output as it is produced, ending with a chunk that carries the finish reason."""
        failures: list[str] = []
        exclude: set[GroupRef] = set()
        deadline_s = self.t.arrived_mono_s + self.p.limits.request_timeout_s
        attempt = stalled = 0  # every attempt so far; those in a row that streamed no new token
        while True:
            remaining = self.req.sampling.max_tokens - len(self.output_ids)
            context = len(self.req.prompt_token_ids) + len(self.output_ids)
            frozen = frozenset(exclude)

            def route(
                context: int = context, remaining: int = remaining, frozen: frozenset[GroupRef] = frozen
            ) -> Route:
                return choose_route(
                    self.p.cache.groups(), self.req.model, context, remaining, self.p.inflight, frozen
                )

            try:
                self.route = await self.p.admission.admit(route, resuming=attempt > 0, deadline_s=deadline_s)
            except NoCapacity as exc:
                if attempt == 0:
                    raise
                raise NoCapacity(
                    f"the request lost its worker group ({failures[-1]}) and {exc.message}",
                    retry_after_s=exc.retry_after_s,
                ) from None
            if self.t.dispatched_mono_s is None:
                self.t.dispatched_mono_s = time.monotonic()
            produced = len(self.output_ids)
            try:
                async for chunk in self._attempt(self.route, attempt, remaining):
                    yield chunk
                return
            except _GroupFailed as exc:
                failures.append(str(exc))
                if exc.group is not None:
                    exclude.add(exc.group)
                    self.p.cache.suspect(exc.group)
                self.p.metrics.retries.labels(stage=exc.stage).inc()
                stalled = 0 if len(self.output_ids) > produced else stalled + 1
                if stalled >= self.p.max_attempts:
                    break
                log.info("request %s: %s; retrying after %d tokens", self.req.request_id, exc,
                         len(self.output_ids))
                self.num_retries += 1
                attempt += 1
        raise UpstreamError(
            f"the request failed {len(failures)} times ({stalled} in a row without a new token): "
            + "; ".join(failures[-self.p.max_attempts:])
        )

    async def _attempt(self, route: Route, attempt: int, max_tokens: int) -> AsyncGenerator[Chunk, None]:
        rid = self.req.request_id if attempt == 0 else f"{self.req.request_id}~{attempt}"
        prompt = [*self.req.prompt_token_ids, *self.output_ids]  # resumes after a failed group
        # A resumed attempt keeps the request's seeds, penalties and min_tokens (output_offset)
        # and does not ask for the prompt's logprobs again (issue 14).
        sampling = self.req.sampling.resumed(len(self.output_ids))
        decode_client = self.p.clients.get(route.decode.address)
        # The decode group only allocates when the decode call starts, so its heartbeats cannot
        # show this request before then (sent_at_s = inf until it does).
        decode_res = self.p.inflight.add(route.decode.group_id, route.decode_blocks, math.inf)
        prefill_res: Reservation | None = None
        first_token_id: int | None = None
        kv = None
        prefill_client: GroupClient | None = None
        resumed = self._resumed_text() if self.output_ids else None
        try:
            if route.prefill is not None:
                prefill_client = self.p.clients.get(route.prefill.address)
                prefill_res = self.p.inflight.add(
                    route.prefill.group_id, route.prefill.blocks_for(len(prompt)), time.time()
                )
                try:
                    first = await prefill_client.prefill(rid, prompt, sampling)
                except WorkerControlError as exc:
                    if is_retryable(exc):
                        raise _GroupFailed(ref(route.prefill), "prefill", exc.message) from None
                    raise _translate(exc) from None
                finally:
                    self.p.inflight.remove(prefill_res)
                self.t.worker_queue_s += first.queue_ms / 1e3
                chunk = Chunk(
                    first.text, (first.first_token_id,), first.finish_reason, first.logprobs,
                    first.prompt_logprobs, first.stop_reason,
                )
                if resumed is not None:
                    chunk = _rederive(resumed, [*self.output_ids, first.first_token_id], chunk)
                yield self._emit(chunk)
                if chunk.finish_reason is not None:
                    return
                first_token_id, kv = first.first_token_id, first.kv

            decode_res.sent_at_s = time.time()
            stream = decode_client.decode(rid, prompt, sampling, first_token_id, kv)
            kv = None  # handed over: the decode group now owns pulling (or releasing) it
            try:
                async for ev in stream:
                    if ev.finish_reason is FinishReason.ERROR:
                        if ev.error_kind is ErrorKind.INVALID_REQUEST:
                            raise InvalidRequest(f"The worker rejected the request: {ev.error}")
                        # A KV pull that failed is no fault of the decode group: prefill again.
                        failed = None if ev.error_kind is ErrorKind.KV_TRANSFER else ref(route.decode)
                        raise _GroupFailed(failed, "decode", ev.error or "error event")
                    if ev.finish_reason is FinishReason.CANCELLED:
                        raise UpstreamError(f"decode group {route.decode.group_id} cancelled the request")
                    chunk = Chunk(
                        ev.text, ev.token_ids, ev.finish_reason, ev.logprobs, ev.prompt_logprobs,
                        ev.stop_reason,
                    )
                    if resumed is not None:
                        chunk = _rederive(resumed, [*self.output_ids, *ev.token_ids], chunk)
                    yield self._emit(chunk)
                    if chunk.finish_reason is not None:
                        return
            except WorkerControlError as exc:
                if is_retryable(exc):
                    raise _GroupFailed(ref(route.decode), "decode", exc.message) from None
                raise _translate(exc) from None
            finally:
                # Closing early cancels the request on the decode group and frees its blocks.
                await _aclose(stream)
            raise _GroupFailed(ref(route.decode), "decode", "the token stream ended without a finish")
        finally:
            self.p.inflight.remove(decode_res)
            self.p.admission.wake()  # what it held may now fit a waiting request
            if kv is not None and prefill_client is not None:
                # Prefilled but never handed to decode: ask the prefill group to drop the lease
                # now rather than at its expiry.
                await _quiet_cancel(prefill_client, rid)

    def _resumed_text(self) -> TextStream | None:
        """The text of an attempt that resumes after tokens were already sent. The new group
        decodes only the tokens it makes, so a character whose bytes straddle the failure (held
        back as a partial UTF-8 sequence) or a stop string spanning it would be lost or missed;
        the frontend decodes all output ids instead, from the text already sent."""
        if self.p.decoder is None:
            return None
        return TextStream(self.p.decoder, self.req.sampling.stop, emitted=self.text_sent)

    def _emit(self, chunk: Chunk) -> Chunk:
        self.output_ids.extend(chunk.token_ids)
        self.text_sent += chunk.text
        gap = self.t.on_tokens(len(chunk.token_ids))
        if gap is not None:
            self.p.metrics.observe_gap(self.req.model, gap)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        return chunk

    # ---- the record -------------------------------------------------------------------------------
    def finish(self, status: RequestStatus) -> RequestRecord:
        """Record the request once: Prometheus, and the Redis stream for the planner."""
        if self._finished:
            raise RuntimeError(f"request {self.req.request_id} finished twice")
        self._finished = True
        t, model = self.t, self.req.model
        end = time.monotonic()
        ttft_s = None if t.first_token_mono_s is None else t.first_token_mono_s - t.arrived_mono_s
        itl_s = None
        if t.num_output_tokens > 1 and t.first_token_mono_s is not None and t.last_token_mono_s is not None:
            itl_s = (t.last_token_mono_s - t.first_token_mono_s) / (t.num_output_tokens - 1)
        queue_s = admission_s = None
        if t.dispatched_mono_s is not None:  # in this frontend's queue, then on the prefill group
            admission_s = t.dispatched_mono_s - t.arrived_mono_s
            queue_s = admission_s + t.worker_queue_s
        finish_reason = None if self.finish_reason is None else str(self.finish_reason)
        self.p.metrics.in_flight.labels(model=model).dec()
        self.p.metrics.observe_request(RequestSample(
            model, str(self.req.endpoint), str(status), finish_reason, len(self.req.prompt_token_ids),
            t.num_output_tokens, end - t.arrived_mono_s, ttft_s, queue_s,
        ))

        def ms(s: float | None) -> float | None:
            return None if s is None else round(s * 1e3, 3)

        record = RequestRecord(
            request_id=self.req.request_id,
            model=model,
            status=status,
            finish_reason=finish_reason,
            isl_tokens=len(self.req.prompt_token_ids),
            osl_tokens=t.num_output_tokens,
            queue_ms=ms(queue_s),
            admission_queue_ms=ms(admission_s),
            retries=self.num_retries,
            ttft_ms=ms(ttft_s),
            itl_ms=ms(itl_s),
            itl_max_ms=ms(t.max_gap_s) if itl_s is not None else None,
            e2e_ms=ms(end - t.arrived_mono_s) or 0.0,
            arrived_at_s=t.arrived_at_s,
            prefill_group=None if self.route is None or self.route.prefill is None
            else self.route.prefill.group_id,
            decode_group=None if self.route is None else self.route.decode.group_id,
        )
        if self.p.writer is not None:
            self.p.writer.record(record)
        return record


def _rederive(text: TextStream, output_ids: list[int], chunk: Chunk) -> Chunk:
    """`chunk` with its text decoded by the frontend from all `output_ids` (stop strings cut)."""
    delta = text.update(output_ids)
    if delta.stopped:
        return replace(chunk, text=delta.text, finish_reason=FinishReason.STOP)
    if chunk.finish_reason is not None:
        return replace(chunk, text=delta.text + text.flush(output_ids))
    return replace(chunk, text=delta.text, finish_reason=None)


def _translate(exc: WorkerControlError) -> FrontendError:
    """A group's non-retryable answer, as the client's error (INVALID_ARGUMENT -> 400)."""
    if exc.code.name == "INVALID_ARGUMENT":
        field_name, _, _ = exc.message.partition(":")
        param = field_name if field_name.isidentifier() else None
        return InvalidRequest(
            f"The worker rejected the request: {exc.message}", param=param, code="invalid_value"
        )
    return UpstreamError(f"worker group error {exc.code.name}: {exc.message}")


async def _aclose(stream: AsyncIterator[object]) -> None:
    close = getattr(stream, "aclose", None)  # every async generator has it; a plain iterator may not
    if close is not None:
        await close()


_background: set[asyncio.Task[bool]] = set()


async def _quiet_cancel(client: GroupClient, request_id: str) -> None:
    """Best effort, shielded: this runs while the request's task is being cancelled."""
    task = asyncio.ensure_future(asyncio.wait_for(client.cancel(request_id), CANCEL_RPC_TIMEOUT_S))
    _background.add(task)
    task.add_done_callback(_background.discard)
    with contextlib.suppress(Exception):
        await asyncio.shield(task)
