"""The operator's Kubernetes API client: the few calls the reconcile makes, over aiohttp.

Credentials come from kopf's login (`kopf.ConnectionInfo`), so the operator's own requests and
kopf's watches share one identity. `KubeApi` is a Protocol: the reconcile is written against it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
import kopf
from moeplane.operator.kinds import Kind

USER_AGENT = "moeplane-operator/0.1.0"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A failed API call, with the server's `Status` reason and message."""

    def __init__(self, status: int, reason: str, message: str, verb: str, path: str) -> None:
        super().__init__(f"{verb} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


class KubeApi(Protocol):
    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list(self, kind: Kind, namespace: str, label_selector: str = "") -> list[dict[str, Any]]: ...

    async def create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def patch(
        self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any], subresource: str | None = None
    ) -> dict[str, Any]: ...

    async def delete(self, kind: Kind, namespace: str, name: str, uid: str | None = None) -> None: ...


class HttpKubeApi:
    """`KubeApi` over HTTP. One aiohttp session, created on first use in the running loop."""

    def __init__(self, info: kopf.ConnectionInfo, request_timeout_s: float = 30.0) -> None:
        self._info = info
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    async def _client(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is None or self._session.closed:
                ssl: Any = False if self._info.insecure else self._info.as_ssl_context()
                self._session = aiohttp.ClientSession(
                    base_url=self._info.server.rstrip("/") + "/",
                    headers={
                        **self._info.as_http_headers(),
                        "User-Agent": USER_AGENT,
                        "Accept": "application/json",
                    },
                    connector=aiohttp.TCPConnector(ssl=ssl, limit=32),
                    timeout=self._timeout,
                )
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self,
        verb: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        session = await self._client()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with session.request(verb, path.lstrip("/"), data=data, headers=headers, params=params) as resp:
            text = await resp.text()
            payload = json.loads(text) if text else {}
            if resp.status >= 400:
                reason = payload.get("reason", resp.reason or "") if isinstance(payload, dict) else ""
                message = payload.get("message", text) if isinstance(payload, dict) else text
                raise ApiError(resp.status, str(reason), str(message), verb, path)
            return payload

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(await self._call("GET", kind.path(namespace, name)))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def list(self, kind: Kind, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        found = await self._call("GET", kind.path(namespace), params=params)
        return list(found.get("items") or [])

    async def create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(await self._call("POST", kind.path(namespace), body=body))

    async def patch(
        self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        return dict(
            await self._call(
                "PATCH", kind.path(namespace, name, subresource), body=patch, content_type=MERGE_PATCH
            )
        )

    async def delete(self, kind: Kind, namespace: str, name: str, uid: str | None = None) -> None:
        body: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._call("DELETE", kind.path(namespace, name), body=body)
        except ApiError as exc:
            if not exc.not_found:
                raise


def in_cluster_server(env: Mapping[str, str]) -> str | None:
    """The API server as client-go's in-cluster config finds it: `KUBERNETES_SERVICE_HOST` and
    `KUBERNETES_SERVICE_PORT` (the kubelet sets them in every pod), None without them."""
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The pod's ServiceAccount (at the address client-go would use: kopf's own login assumes
    `kubernetes.default.svc:443`, which a cluster may not resolve or serve), else the kubeconfig."""
    import dataclasses
    import os

    info = kopf.login_with_service_account(**kwargs)
    if info is not None:
        server = in_cluster_server(os.environ)
        return dataclasses.replace(info, server=server) if server else info
    return kopf.login_with_kubeconfig(**kwargs)
