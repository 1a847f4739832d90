"""Requests as the API server sees them: the target resource, the verb RBAC would check, the body,
and the record of one call."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import kmock
import yaml
from kmock._internal import enums, parsing, rendering

from tests.kube.errors import bad_request, method_not_allowed, unsupported_media
from tests.kube.selectors import field_selector, label_selector


@dataclass(frozen=True)
class ApiCall:
    """One request as RBAC sees it: who, which verb, on which group/resource/subresource."""

    user: str
    verb: str
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    at_s: float

    @property
    def rbac(self) -> tuple[str, str, str]:
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return (self.verb, self.group, resource)

    @property
    def is_write(self) -> bool:
        return self.verb in ("create", "update", "patch", "delete", "deletecollection")


@dataclass(frozen=True)
class Target:
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_resource_path(path: str) -> Target | None:
    segs = [s for s in path.split("/") if s]
    if len(segs) >= 3 and segs[0] == "api":
        group, version, rest = "", segs[1], segs[2:]
    elif len(segs) >= 4 and segs[0] == "apis":
        group, version, rest = segs[1], segs[2], segs[3:]
    else:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        return None
    return Target(
        group,
        version,
        rest[0],
        namespace,
        rest[1] if len(rest) > 1 else None,
        rest[2] if len(rest) > 2 else None,
    )


def verb_of(method: str, target: Target, params: dict[str, str]) -> str:
    if method == "GET":
        if params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if target.name else "list"
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    if method == "DELETE" and not target.name:
        return "deletecollection"
    if method not in verbs:
        raise method_not_allowed(f"method {method} is not supported")
    return verbs[method]


def predicate_of(params: dict[str, str]) -> Any:
    labels = label_selector(params.get("labelSelector"))
    fields = field_selector(params.get("fieldSelector"))
    return lambda obj: labels(obj) and fields(obj)


def body_of(request: rendering.Request) -> Any:
    content_type = request.headers.get("Content-Type", "")
    if "protobuf" in content_type or "cbor" in content_type:
        # No Go types here to decode them; client-go falls back to JSON on 415.
        raise unsupported_media(content_type)
    if (
        request.data is not None
        and not isinstance(request.data, (str, bytes))
        and not hasattr(request.data, "getall")
    ):
        return request.data
    text = request.text.strip()
    if not text:
        raise bad_request("the request body is empty")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise bad_request(f"the request body is neither JSON nor YAML: {exc}") from None


async def parse_request(raw: aiohttp.web.BaseRequest, request_id: int) -> rendering.Request:
    """kmock's `Request._parse` with this module's path parsing (kmock's fails on `/api/v1/namespaces`)."""
    body = await raw.read()
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    target = parse_resource_path(raw.path)
    resource = namespace = name = subresource = None
    action = None
    if target is not None:
        resource = kmock.resource(group=target.group, version=target.version, plural=target.plural)
        namespace, name, subresource = target.namespace, target.name, target.subresource
        parsed = parsing.ParsedPath(target.group, target.version, target.plural, namespace, name, subresource)
        action = parsing.guess_k8s(parsed, enums.method(raw.method), dict(raw.query))
    return rendering.Request(
        id=request_id,
        raw_request=raw,
        url=raw.url,
        method=raw.method,
        params=dict(raw.query),
        headers=dict(raw.headers),
        cookies=dict(raw.cookies),
        data=data,
        body=body,
        text=text,
        action=action,
        resource=resource,
        namespace=namespace,
        name=name,
        subresource=subresource,
    )
