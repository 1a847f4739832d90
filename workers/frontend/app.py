"""The OpenAI-compatible HTTP API on aiohttp: thin handlers over requests.py, pipeline.py and responses.py.

Routes: POST /v1/completions, POST /v1/chat/completions (both streaming and not), GET /v1/models,
GET /health, GET /metrics. Every error leaves as an OpenAI error body (the middleware renders
`FrontendError`s; anything unexpected is a logged 500 `server_error`, never a traceback). Every
response is counted by route and status code.

/health (the frontend's readiness probe) reports, per role, its groups by state (live, starting,
draining, restarting, failed, with each group's restarts and reason). It answers 200 only when
every role can serve, i.e. has a live group (decode always; prefill when any prefill group is
registered: with none, the deployment runs aggregated); otherwise 503 with the reason. The body's
`status` is `ok`, `degraded` (every role serves, but a group is restarting or failed: less
capacity, and the reason) or `unavailable` (503). A degraded pool stays ready on purpose: taking
every frontend out of its Service because one of several groups restarts would turn one dead rank
into an outage.

Errors that happen before the first output token (no capacity, a group's refusal, the timeout)
get their own HTTP status; a stream that already started ends with an error event instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from moeplane.workers.frontend import responses as R
from moeplane.workers.frontend.chat_template import render_chat
from moeplane.workers.frontend.errors import (
    FrontendError,
    InvalidRequest,
    ModelNotFound,
    NoCapacity,
    RequestTimeout,
    UpstreamError,
)
from moeplane.workers.frontend.health import health_report
from moeplane.workers.frontend.metrics import CONTENT_TYPE, FrontendMetrics
from moeplane.workers.frontend.pipeline import Chunk, Endpoint, GenerateRequest, Pipeline, Timings
from moeplane.workers.frontend.requests import SamplingBody, parse_chat, parse_completion
from moeplane.workers.model.tokenizer import Tokenizer
from moeplane.workers.serving.sequence import FinishReason, SamplingParams
from moeplane.workers.serving.sequence import InvalidRequest as EngineInvalidRequest

from moeplane.bus.request_metrics import RequestStatus

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class FrontendConfig:
    served_model: str
    max_model_len: int
    default_max_tokens: int = 256  # chat requests that set no max_tokens
    request_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_model_len < 2 or self.default_max_tokens < 1 or self.request_timeout_s <= 0:
            raise ValueError(
                f"bad frontend config: max_model_len={self.max_model_len} (>= 2), default_max_tokens="
                f"{self.default_max_tokens} (>= 1), request_timeout_s={self.request_timeout_s} (> 0)"
            )


def counting(metrics: FrontendMetrics) -> Middleware:
    """A middleware counting responses by route and status code (outside `openai_errors`, so the
    error bodies it renders are counted with their status)."""

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            metrics.responses.labels(route=route, code=str(exc.status)).inc()
            raise
        metrics.responses.labels(route=route, code=str(resp.status)).inc()
        return resp

    return count


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FrontendError as err:
        return web.json_response(err.body(), status=err.http_status, headers=err.headers())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = FrontendError(f"{exc.reason}: {request.method} {request.path}", code=str(exc.status)).body()
        body["error"]["type"] = "invalid_request_error"
        return web.json_response(body, status=exc.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        internal = FrontendError(
            "The server had an error while processing your request.", code="internal_error"
        )
        return web.json_response(internal.body(), status=500)


class Frontend:
    def __init__(self, config: FrontendConfig, pipeline: Pipeline, tokenizer: Tokenizer) -> None:
        self.config = config
        self.pipeline = pipeline
        self.tokenizer = tokenizer
        self.started_at = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[counting(self.pipeline.metrics), openai_errors], client_max_size=8 * 1024 * 1024
        )
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app

    # ---- handlers ---------------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        timings = Timings()
        body = parse_completion(await request.read())
        self._check_model(body.model)
        if isinstance(body.prompt, str):
            prompt = self.tokenizer.encode(body.prompt)
        else:
            prompt = list(body.prompt)
            bad = [t for t in prompt if not 0 <= t < self.tokenizer.vocab_size]
            if bad:
                raise InvalidRequest(
                    f"Invalid value for 'prompt': token ids {bad[:5]} are outside the vocabulary "
                    f"[0, {self.tokenizer.vocab_size})", param="prompt", code="invalid_value",
                )
        max_tokens = body.max_tokens if body.max_tokens is not None else 16
        req = self._generate_request("cmpl", Endpoint.COMPLETIONS, body.model, prompt, max_tokens, body)
        return await self._respond(request, req, timings, body.stream, body.include_usage)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        timings = Timings()
        body = parse_chat(await request.read())
        self._check_model(body.model)
        prompt = self.tokenizer.encode(render_chat(body.messages))
        max_tokens = body.max_new_tokens
        if max_tokens is None:
            max_tokens = max(1, min(self.config.default_max_tokens, self.config.max_model_len - len(prompt)))
        req = self._generate_request("chatcmpl", Endpoint.CHAT, body.model, prompt, max_tokens, body)
        return await self._respond(request, req, timings, body.stream, body.include_usage)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(R.models_body([self.config.served_model], self.started_at))

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
        return web.json_response(body, status=200 if report.can_serve else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.pipeline.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    # ---- helpers ----------------------------------------------------------------------------------
    def _check_model(self, model: str) -> None:
        if model != self.config.served_model:
            raise ModelNotFound(model, [self.config.served_model])

    def _generate_request(
        self, prefix: str, endpoint: Endpoint, model: str, prompt: list[int], max_tokens: int,
        body: SamplingBody,
    ) -> GenerateRequest:
        limit = self.config.max_model_len
        if len(prompt) + max_tokens > limit:
            raise InvalidRequest(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the prompt, {max_tokens} for the "
                "completion). Please reduce the prompt or max_tokens.",
                param="max_tokens" if len(prompt) < limit else "prompt",
                code="context_length_exceeded",
            )
        try:
            sampling = SamplingParams(
                temperature=body.temperature,
                top_p=body.top_p,
                seed=body.seed,
                max_tokens=max_tokens,
                stop=body.stop,
                ignore_eos=body.ignore_eos,
            )
        except EngineInvalidRequest as exc:
            detail = str(exc).removeprefix(f"{exc.field}: ")
            raise InvalidRequest(f"Invalid value for '{exc.field}': {detail}", param=exc.field) from None
        return GenerateRequest(f"{prefix}-{uuid.uuid4().hex}", model, endpoint, tuple(prompt), sampling)

    async def _respond(
        self, request: web.Request, req: GenerateRequest, timings: Timings, stream: bool, include_usage: bool
    ) -> web.StreamResponse:
        exchange = self.pipeline.open(req, timings)
        chunks = exchange.chunks()
        out = _Output(req, int(timings.arrived_at_s), include_usage)
        status = RequestStatus.ERROR
        resp: web.StreamResponse | None = None
        rid_header = {"X-Request-Id": req.request_id}
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
                        body = await out.collect(_prepend(first, chunks))
                        resp = web.json_response(body, headers=rid_header)
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
            exchange.finish(status)
        return resp


async def _prepend(first: Chunk, rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    yield first
    async for chunk in rest:
        yield chunk


class _Output:
    """Renders chunks as one endpoint's streamed events or final body."""

    def __init__(self, req: GenerateRequest, created: int, include_usage: bool) -> None:
        self.req = req
        self.created = created
        self.include_usage = include_usage
        self.num_tokens = 0
        self.finish: FinishReason | None = None

    def _usage(self) -> dict[str, int]:
        return R.usage(len(self.req.prompt_token_ids), self.num_tokens)

    async def collect(self, chunks: AsyncIterator[Chunk]) -> dict[str, object]:
        texts = []
        async for c in chunks:
            texts.append(c.text)
            self.num_tokens += len(c.token_ids)
            self.finish = c.finish_reason or self.finish
        r, text = self.req, "".join(texts)
        if r.endpoint is Endpoint.CHAT:
            return R.chat_body(r.request_id, self.created, r.model, text, self.finish, self._usage())
        return R.completion_body(r.request_id, self.created, r.model, text, self.finish, self._usage())

    async def stream(self, resp: web.StreamResponse, chunks: AsyncIterator[Chunk]) -> None:
        r, chat = self.req, self.req.endpoint is Endpoint.CHAT
        if chat:
            await resp.write(R.sse(R.chat_chunk(r.request_id, self.created, r.model,
                                                {"role": "assistant", "content": ""}, None)))
        async for c in chunks:
            self.num_tokens += len(c.token_ids)
            if not c.text and c.finish_reason is None:
                continue  # held-back text (a possible stop string, a partial character)
            if chat:
                delta = {"content": c.text} if c.text else {}
                event = R.chat_chunk(r.request_id, self.created, r.model, delta, c.finish_reason)
            else:
                event = R.completion_chunk(r.request_id, self.created, r.model, c.text, c.finish_reason)
            await resp.write(R.sse(event))
        if self.include_usage:
            obj = "chat.completion.chunk" if chat else "text_completion"
            await resp.write(R.sse(R.usage_chunk(r.request_id, self.created, r.model, obj, self._usage())))
        await resp.write(R.SSE_DONE)
