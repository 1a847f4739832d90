"""The OpenAI-compatible HTTP API on aiohttp: thin handlers over requests.py, generation.py,
pipeline.py and output.py, with vLLM's extra endpoints.

Routes: POST /v1/completions, POST /v1/chat/completions (both streaming and not), GET /v1/models,
GET /v1/models/{model}, POST /tokenize, POST /detokenize, GET /health, GET /metrics. Every error
leaves as an OpenAI error body with the request's `X-Request-Id` (middleware.py); with an API key
configured, everything but /health and /metrics needs it. Every response is counted by route and
status code.

/health (the frontend's readiness probe) reports, per role, its groups by state (live, starting,
draining, restarting, failed, with each group's restarts and reason). It answers 200 only when
every role can serve, i.e. has a live group (decode always; prefill when any prefill group is
registered: with none, the deployment runs aggregated); otherwise 503 with the reason. The body's
`status` is `ok`, `degraded` (every role serves, but a group is restarting or failed: less
capacity, and the reason) or `unavailable` (503). A degraded pool stays ready on purpose: taking
every frontend out of its Service because one of several groups restarts would turn one dead rank
into an outage. A frontend that got SIGTERM answers `draining` (503) while it still serves the
requests already on their way (`main.serve`).

Errors that happen before the first output token (no capacity, a group's refusal, the timeout)
get their own HTTP status; a stream that already started ends with an error event instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from moeplane.workers.frontend import responses as R
from moeplane.workers.frontend.errors import (
    FrontendError,
    InvalidRequest,
    ModelNotFound,
    NoCapacity,
    RequestTimeout,
    UpstreamError,
)
from moeplane.workers.frontend.generation import (
    Choices,
    PromptPlan,
    chat_prompt_ids,
    check_token_ids,
    plan_choices,
    sampling_params,
)
from moeplane.workers.frontend.health import health_report
from moeplane.workers.frontend.logprobs import TokenNames
from moeplane.workers.frontend.metrics import CONTENT_TYPE
from moeplane.workers.frontend.middleware import (
    CLIENT_ID,
    REQUEST_ID_HEADER,
    RESPONSE_ID,
    api_keys,
    counting,
    openai_errors,
    request_ids,
)
from moeplane.workers.frontend.output import Output, OutputSpec
from moeplane.workers.frontend.pipeline import Chunk, Endpoint, Pipeline, Timings
from moeplane.workers.frontend.requests import (
    ChatRole,
    Parsed,
    SamplingBody,
    parse_chat,
    parse_completion,
    parse_detokenize,
    parse_tokenize,
)
from moeplane.workers.model.tokenizer import Tokenizer
from moeplane.workers.serving.sequence import SamplingParams

from moeplane.bus.request_metrics import RequestStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrontendConfig:
    served_model: str
    max_model_len: int
    default_max_tokens: int = 256  # chat requests that set no max_tokens
    request_timeout_s: float = 300.0
    api_key: str | None = None  # None: no key needed
    model_root: str | None = None  # /v1/models `root` (the checkpoint); None: the served name

    def __post_init__(self) -> None:
        if self.max_model_len < 2 or self.default_max_tokens < 1 or self.request_timeout_s <= 0:
            raise ValueError(
                f"bad frontend config: max_model_len={self.max_model_len} (>= 2), default_max_tokens="
                f"{self.default_max_tokens} (>= 1), request_timeout_s={self.request_timeout_s} (> 0)"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("bad frontend config: api_key must not be empty (omit it for no key)")


class Frontend:
    def __init__(self, config: FrontendConfig, pipeline: Pipeline, tokenizer: Tokenizer) -> None:
        self.config = config
        self.pipeline = pipeline
        self.tokenizer = tokenizer
        self.started_at = int(time.time())
        self._live_ids: set[str] = set()  # request ids on the groups now (client ids may repeat)
        # Set when the process got SIGTERM: /health turns 503 so the Service stops sending new
        # clients here, while the requests already on their way are still served (see main.serve).
        self.draining: str | None = None

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[
                counting(self.pipeline.metrics), request_ids, openai_errors, api_keys(self.config.api_key)
            ],
            client_max_size=8 * 1024 * 1024,
        )
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model:.+}", self.model)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app

    # ---- generation -------------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        timings = Timings()
        rid = self._response_id(request, "cmpl")
        parsed = parse_completion(await request.read())
        body, rid = parsed.body, self._body_id(request, parsed, "cmpl", rid)
        model = self._check_model(body.model)
        prompts = [self._completion_prompt(i, p, body.add_special_tokens, body.truncate_prompt_tokens)
                   for i, p in enumerate(body.prompt)]
        echo_only = body.echo and body.max_tokens == 0
        want_prompt = body.prompt_logprobs
        if want_prompt is None and body.echo and body.logprobs is not None:
            want_prompt = body.logprobs  # echo with logprobs returns the prompt's too (vLLM)
        sampling = []
        for p in prompts:
            max_tokens = body.max_tokens
            if max_tokens is None:  # vLLM: what the context leaves
                max_tokens = max(1, self.config.max_model_len - len(p.token_ids))
            self._check_context(len(p.token_ids), max_tokens)
            # echo with max_tokens 0 returns only the prompt; the groups still sample one token.
            engine_max = 1 if echo_only else max_tokens
            vocab = self.tokenizer.vocab_size
            sampling.append(sampling_params(body, vocab, engine_max, body.logprobs, want_prompt))
        spec = OutputSpec(
            Endpoint.COMPLETIONS, rid, int(timings.arrived_at_s), model, logprobs=body.logprobs,
            echo=body.echo, echo_only=echo_only, prompt_logprobs=body.prompt_logprobs,
            include_usage=body.include_usage,            continuous_usage=body.continuous_usage,
        )
        return await self._generate(request, body, Endpoint.COMPLETIONS, prompts, sampling, spec, timings)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        timings = Timings()
        rid = self._response_id(request, "chatcmpl")
        parsed = parse_chat(await request.read())
        body, rid = parsed.body, self._body_id(request, parsed, "chatcmpl", rid)
        model = self._check_model(body.model)
        ids = chat_prompt_ids(self.tokenizer, body)
        if body.truncate_prompt_tokens is not None:
            ids = ids[-body.truncate_prompt_tokens :]
        prompt = PromptPlan(0, tuple(ids), "")
        max_tokens = body.max_new_tokens
        if max_tokens is None:
            max_tokens = max(1, min(self.config.default_max_tokens, self.config.max_model_len - len(ids)))
        self._check_context(len(ids), max_tokens)
        top = (body.top_logprobs or 0) if body.logprobs else None
        sampling = sampling_params(body, self.tokenizer.vocab_size, max_tokens, top, body.prompt_logprobs)
        last = body.messages[-1]
        spec = OutputSpec(
            Endpoint.CHAT, rid, int(timings.arrived_at_s), model, logprobs=top,
            chat_echo=last.content if body.echo and last.role is ChatRole.ASSISTANT else "",
            prompt_logprobs=body.prompt_logprobs, include_usage=body.include_usage,
            continuous_usage=body.continuous_usage,
        )
        return await self._generate(request, body, Endpoint.CHAT, [prompt], [sampling], spec, timings)

    async def _generate(
        self, request: web.Request, body: SamplingBody, endpoint: Endpoint, prompts: Sequence[PromptPlan],
        sampling: Sequence[SamplingParams], spec: OutputSpec, timings: Timings,
    ) -> web.StreamResponse:
        base = spec.request_id
        if base in self._live_ids:  # a client reusing its X-Request-Id while the first still runs
            base = f"{base}.{uuid.uuid4().hex[:8]}"
        plans = plan_choices(base, spec.model, endpoint, prompts, body.n, sampling)
        names = TokenNames(self.tokenizer, as_ids=bool(body.return_tokens_as_token_ids))
        self._live_ids.add(base)
        try:
            run = Choices(self.pipeline, plans, timings)
            return await self._respond(request, run, Output(spec, plans, names), body.stream)
        finally:
            self._live_ids.discard(base)

    async def _respond(
        self, request: web.Request, run: Choices, out: Output, stream: bool
    ) -> web.StreamResponse:
        chunks = run.chunks()
        status = RequestStatus.ERROR
        resp: web.StreamResponse | None = None
        rid_header = {REQUEST_ID_HEADER: request[CLIENT_ID] or out.spec.request_id}
        try:
            try:
                async with asyncio.timeout(self.config.request_timeout_s):
                    # Everything up to the first token can still fail with a proper HTTP status.
                    first = await anext(chunks, None)
                    if first is None:
                        raise UpstreamError("the worker group ended the request without output")
                    if stream:
                        resp = web.StreamResponse(status=200, headers={**R.SSE_HEADERS, **rid_header})
                        await resp.prepare(request)
                        await out.stream(resp, _prepend(first, chunks))
                    else:
                        result = await out.collect(_prepend(first, chunks))
                        resp = web.json_response(result, headers=rid_header)
                status = RequestStatus.OK
            except TimeoutError:
                status = RequestStatus.TIMEOUT
                raise RequestTimeout(self.config.request_timeout_s) from None
            except (asyncio.CancelledError, ConnectionResetError):
                status = RequestStatus.CANCELLED
                raise
            except (InvalidRequest, NoCapacity, ModelNotFound):
                status = RequestStatus.REJECTED
                raise
        except FrontendError as err:
            if resp is None or not resp.prepared:
                raise
            with contextlib.suppress(ConnectionResetError):  # the stream started: end it with the error
                await resp.write(R.sse(err.body()))
                await resp.write(R.SSE_DONE)
            return resp
        finally:
            await chunks.aclose()  # leaving early cancels the request on its groups
            run.finish(status)
        return resp

    # ---- vLLM's extra endpoints and the model list ------------------------------------------------
    async def tokenize(self, request: web.Request) -> web.Response:
        parsed = parse_tokenize(await request.read())
        body = parsed.body
        self._log_ignored(request, parsed)
        self._check_model(body.model)
        if body.prompt is not None:
            add = True if body.add_special_tokens is None else body.add_special_tokens
            ids = self.tokenizer.encode(body.prompt, add_special_tokens=add)
        else:
            assert body.messages is not None
            ids = chat_prompt_ids(self.tokenizer, body)
        names = TokenNames(self.tokenizer)
        strs = [names.text(t) for t in ids] if body.return_token_strs else None
        return web.json_response(R.tokenize_body(ids, self.config.max_model_len, strs))

    async def detokenize(self, request: web.Request) -> web.Response:
        parsed = parse_detokenize(await request.read())
        self._log_ignored(request, parsed)
        self._check_model(parsed.body.model)
        check_token_ids("tokens", parsed.body.tokens, self.tokenizer.vocab_size)
        return web.json_response({"prompt": self.tokenizer.decode(parsed.body.tokens)})

    async def models(self, request: web.Request) -> web.Response:
        c = self.config
        return web.json_response(
            R.models_body(c.served_model, c.model_root or c.served_model, c.max_model_len, self.started_at)
        )

    async def model(self, request: web.Request) -> web.Response:
        c = self.config
        self._check_model(request.match_info["model"])
        return web.json_response(
            R.model_card(c.served_model, c.model_root or c.served_model, c.max_model_len, self.started_at)
        )

    async def health(self, request: web.Request) -> web.Response:
        cache = self.pipeline.cache
        await cache.refresh()  # the registry as of now (one Redis read); the cached copy if it is away
        report = health_report(cache.all_groups(), cache.counts())
        body = {
            "status": str(report.status),
            "reason": report.reason,
            "model": self.config.served_model,
            "groups": {str(role): n for role, n in cache.counts().items()},  # live, per role
            "roles": report.roles,
            "queued_requests": self.pipeline.admission.num_waiting,
            "registry_staleness_s": round(cache.staleness_s, 3),
            "registry_error": cache.last_error,
        }
        if self.draining is not None:
            body.update(status="draining", reason=self.draining)
            return web.json_response(body, status=503)
        return web.json_response(body, status=200 if report.can_serve else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.pipeline.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    # ---- helpers ----------------------------------------------------------------------------------
    def _response_id(self, request: web.Request, prefix: str) -> str:
        """`<prefix>-<client's X-Request-Id>` or a fresh one; errors from here on carry it."""
        rid = f"{prefix}-{request[CLIENT_ID] or uuid.uuid4().hex}"
        request[RESPONSE_ID] = rid
        return rid

    def _body_id(self, request: web.Request, parsed: Parsed[Any], prefix: str, rid: str) -> str:
        """vLLM's `request_id` body field names the request when no header did."""
        self._log_ignored(request, parsed)
        given = parsed.body.request_id
        if given is not None and request[CLIENT_ID] is None:
            rid = request[RESPONSE_ID] = f"{prefix}-{given}"
        return rid

    def _log_ignored(self, request: web.Request, parsed: Parsed[Any]) -> None:
        if parsed.ignored:
            shown = ", ".join(name[:64] for name in parsed.ignored[:20])
            more = f" (+{len(parsed.ignored) - 20} more)" if len(parsed.ignored) > 20 else ""
            log.warning(
                "request %s %s: ignored unknown fields: %s%s",
                request.get(RESPONSE_ID) or request[CLIENT_ID] or "-", request.path, shown, more,
            )

    def _check_model(self, model: str | None) -> str:
        if model is not None and model != self.config.served_model:
            raise ModelNotFound(model, [self.config.served_model])
        return self.config.served_model

    def _completion_prompt(
        self, index: int, prompt: str | tuple[int, ...], add_special_tokens: bool, truncate: int | None
    ) -> PromptPlan:
        param = "prompt" if index == 0 else f"prompt[{index}]"
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
            text = prompt
        else:
            ids = list(prompt)
            check_token_ids(param, ids, self.tokenizer.vocab_size)
            text = self.tokenizer.decode(ids)
        if truncate is not None and len(ids) > truncate:
            ids = ids[-truncate:]
            text = self.tokenizer.decode(ids)
        if not ids:
            raise InvalidRequest(f"Invalid value for '{param}': the prompt has no tokens", param=param,
                                 code="invalid_value")
        return PromptPlan(index, tuple(ids), text)

    def _check_context(self, num_prompt: int, max_tokens: int) -> None:
        limit = self.config.max_model_len
        if num_prompt + max_tokens > limit:
            raise InvalidRequest(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{num_prompt + max_tokens} tokens ({num_prompt} in the prompt, {max_tokens} for the "
                "completion). Please reduce the prompt or max_tokens.",
                param="max_tokens" if num_prompt < limit else "prompt",
                code="context_length_exceeded",
            )


async def _prepend(
    first: tuple[int, Chunk], rest: AsyncIterator[tuple[int, Chunk]]
) -> AsyncIterator[tuple[int, Chunk]]:
    yield first
    async for chunk in rest:
        yield chunk
