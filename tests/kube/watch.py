"""Watch streams: JSON lines with `Content-Type: application/json`, resumable by resourceVersion."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import aiohttp.web
from kmock._internal import rendering

from tests.kube.errors import ApiError, bad_request
from tests.kube.http_requests import Target, predicate_of
from tests.kube.resources import ResourceDef
from tests.kube.store import ObjectStore, WatchEvent

JSON = "application/json"


async def serve_watch(
    store: ObjectStore,
    watchers: set[asyncio.Queue[WatchEvent | None]],
    request: rendering.Request,
    d: ResourceDef,
    t: Target,
) -> aiohttp.web.StreamResponse:
    """Stream events as JSON lines: the backlog (initial objects, or history after `resourceVersion`),
    then live events until `timeoutSeconds`, the client leaving, or the server closing.

    A label-selected watch sees only events of objects that match now; an object that stops
    matching is not reported as DELETED (a real server would).
    """
    params = dict(request.params)
    predicate = predicate_of(params)

    def visible(obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if t.namespace and meta.get("namespace") != t.namespace:
            return False
        if t.name and meta.get("name") != t.name:
            return False
        return bool(predicate(obj))

    since = params.get("resourceVersion", "")
    initial_events = params.get("sendInitialEvents") == "true" or since in ("", "0")
    backlog: list[dict[str, Any]] = []
    queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
    if initial_events:
        items, rv = store.list(d, t.namespace, visible)
        backlog = [{"type": "ADDED", "object": item} for item in items]
        if params.get("sendInitialEvents") == "true" and params.get("allowWatchBookmarks") == "true":
            backlog.append(
                {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": d.kind,
                        "apiVersion": d.api_version,
                        "metadata": {
                            "resourceVersion": str(rv),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    },
                }
            )
    else:
        try:
            replay = store.events_since(d.storage_key, int(since))
        except ApiError as exc:
            backlog = [{"type": "ERROR", "object": exc.status()}]
            replay = []
        except ValueError:
            raise bad_request(f"invalid resourceVersion {since!r}") from None
        backlog += [
            {"type": e.type, "object": store.present(e.object, d)} for e in replay if visible(e.object)
        ]
    watchers.add(queue)
    assert request._raw_request is not None
    response = aiohttp.web.StreamResponse(headers={"Content-Type": JSON, "Cache-Control": "no-cache"})
    timeout_s = float(params.get("timeoutSeconds") or math.inf)
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        await response.prepare(request._raw_request)
        for item in backlog:
            await response.write(_line(item))
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                event = await asyncio.wait_for(queue.get(), timeout=min(remaining, 3600.0))
            except TimeoutError:
                continue
            if event is None:
                break
            if event.storage_key == d.storage_key and visible(event.object):
                await response.write(_line({"type": event.type, "object": store.present(event.object, d)}))
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away
    finally:
        watchers.discard(queue)
    return response


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"
