"""The frontend's request middlewares: response counts, request ids, API keys and OpenAI error bodies.

Order (outermost first): `counting` counts every response by route and status code (so the error
bodies the inner middlewares render are counted with their status); `request_ids` gives every
request an id and echoes it in `X-Request-Id` on every response, errors included; `openai_errors`
renders any error as an OpenAI error body; `api_keys` refuses a request without the right
`Authorization: Bearer <key>` (401), except `/health` and `/metrics`, which stay open for probes
and scrapers.

A client's `X-Request-Id` is honoured (vLLM): the response's id becomes `cmpl-<it>` (or
`chatcmpl-<it>`) and the header echoes it unchanged. Without one, the header carries the server's
id. Keys are compared in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from moeplane.workers.frontend.errors import FrontendError, InvalidRequest, Unauthorized
from moeplane.workers.frontend.metrics import FrontendMetrics

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
# request[CLIENT_ID]: the client's X-Request-Id, or None; request[RESPONSE_ID]: the id the handler
# gave the response, once it has one.
CLIENT_ID: web.RequestKey[str | None] = web.RequestKey("client_request_id")
RESPONSE_ID: web.RequestKey[str] = web.RequestKey("response_id", str)
OPEN_PATHS = frozenset({"/health", "/metrics"})
_ID_CHARS = re.compile(r"[\x21-\x7e]{1,128}")  # visible ASCII, as a header and a log line allow


def counting(metrics: FrontendMetrics) -> Middleware:
    """A middleware counting responses by route and status code, 4xx and 5xx included."""

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
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and not _ID_CHARS.fullmatch(given):
        err = InvalidRequest(
            f"Invalid {REQUEST_ID_HEADER} header: use 1 to 128 visible ASCII characters",
            code="invalid_request_id",
        )
        own_id = {REQUEST_ID_HEADER: uuid.uuid4().hex}
        return web.json_response(err.body(), status=err.http_status, headers=own_id)
    request[CLIENT_ID] = given
    resp = await handler(request)
    if not resp.prepared and REQUEST_ID_HEADER not in resp.headers:
        resp.headers[REQUEST_ID_HEADER] = given or request.get(RESPONSE_ID) or uuid.uuid4().hex
    return resp


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
        message = "The server had an error while processing your request."
        internal = FrontendError(message, code="internal_error")
        return web.json_response(internal.body(), status=500)


def api_keys(key: str | None) -> Middleware:
    """Require `Authorization: Bearer <key>` everywhere but OPEN_PATHS (no key: no check)."""
    expected = None if key is None else key.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or request.path in OPEN_PATHS or request.method == "OPTIONS":
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "You didn't provide an API key. Send it in the Authorization header: 'Bearer YOUR_KEY'."
            )
        if not hmac.compare_digest(token.strip().encode(), expected):
            raise Unauthorized("Incorrect API key provided.")
        return await handler(request)

    return check
