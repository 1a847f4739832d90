"""Kopf handlers: thin adapters from kopf's causes to the reconcile, registered per operator.

Handlers are registered on a fresh `kopf.OperatorRegistry` built from the config (no module
state), so tests and the CLI each run their own operator. Domain outcomes become kopf's
vocabulary here and only here: an invalid spec is a `PermanentError`, waiting on children a
`TemporaryError` with a delay.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import kopf
import redis
from moeplane.api.errors import SpecInvalid
from moeplane.operator import names
from moeplane.operator.cleanup import delete_deployment_keys
from moeplane.operator.config import OperatorConfig
from moeplane.operator.context import (
    Context,
    Counters,
    IndexCache,
    KindNotServed,
    KopfEvents,
    Locks,
    index_id,
    snapshot,
)
from moeplane.operator.eplb_status import EplbReader
from moeplane.operator.groups import GroupBook
from moeplane.operator.kinds import CACHED_KINDS, MOEDEPLOYMENT, MOEPOOL, POD, RAYCLUSTER, Kind
from moeplane.operator.kube import ApiError, HttpKubeApi, KubeApi
from moeplane.operator.kube import login as kube_login
from moeplane.operator.reconcile import Outcome, reconcile_deployment, reconcile_pool

MANAGED = {names.MANAGED_BY: names.MANAGER}


class OperatorState:
    """Shared by all handlers of one operator: the API client, per-object locks, counters."""

    def __init__(self, config: OperatorConfig, api: KubeApi | None = None) -> None:
        self.config = config
        self.locks = Locks()
        self.counters = Counters()
        self.reported: dict[tuple[str, str, str], str] = {}
        self._api = api
        self.eplb = EplbReader(config.redis_url) if config.redis_url else None
        # Serving readiness, drains and rollouts read the worker registry in the same Redis.
        self.groups = GroupBook(config.redis_url) if config.redis_url else None
        self.secrets_written: dict[tuple[str, str], str] = {}

    def connect(self, info: kopf.ConnectionInfo) -> None:
        if self._api is None or isinstance(self._api, HttpKubeApi):
            self._api = HttpKubeApi(info)

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            raise kopf.TemporaryError("not logged in to the API server yet", delay=1)
        return self._api

    def warn_once(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        """A Warning Event, posted once per object and message (kopf does not post its own logs)."""
        meta = body.get("metadata") or {}
        key = (reason, str(meta.get("namespace", "")), str(meta.get("name", "")))
        if self.reported.get(key) != message:
            self.reported[key] = message
            KopfEvents().warn(body, reason=reason, message=message)

    def context(self, indexes: Mapping[str, Any]) -> Context:
        return Context(
            api=self.api,
            cache=IndexCache(indexes),
            config=self.config,
            events=KopfEvents(),
            locks=self.locks,
            counters=self.counters,
            reported=self.reported,
            eplb=self.eplb,
            groups=self.groups,
            secrets_written=self.secrets_written,
        )

    async def close(self) -> None:
        if isinstance(self._api, HttpKubeApi):
            await self._api.close()
        if self.eplb is not None:
            await self.eplb.close()
        if self.groups is not None:
            await self.groups.close()


async def _stop_pools(api: KubeApi, namespace: str, deployment: str) -> int:
    """Delete the deployment's RayClusters (garbage collection would, but only once the deployment
    is gone); return how many of their pods are still there."""
    selector = f"{names.DEPLOYMENT_LABEL}={names.label_value(deployment)}"
    for rc in await api.list(RAYCLUSTER, namespace, selector):
        if not rc["metadata"].get("deletionTimestamp"):
            with contextlib.suppress(ApiError):
                await api.delete(RAYCLUSTER, namespace, str(rc["metadata"]["name"]))
    return len(await api.list(POD, namespace, f"{selector},ray.io/node-type"))


def make_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = names.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.PROGRESS_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=names.PROGRESS_PREFIX)
    # kopf turns no log line into an Event (posting.loggers is off); should it be turned on, only
    # warnings would be posted: a healthy resync must write nothing.
    settings.posting.level = logging.WARNING
    for kind in CACHED_KINDS:
        if kind is not MOEPOOL:  # a user may create a pool by hand; the operator serves it too
            settings.watching.label_selectors[kind.kopf_resource] = names.MANAGED_SELECTOR
    return settings


def _selector(kind: Kind) -> tuple[str, str] | tuple[str, str, str]:
    return (kind.group, kind.version, kind.plural) if kind.group else (kind.version, kind.plural)


def _raise_for(outcome: Outcome, delay_s: float) -> None:
    if outcome.invalid:
        raise kopf.PermanentError(outcome.invalid)
    if not outcome.ready:
        raise kopf.TemporaryError(f"waiting for children: {outcome.waiting}", delay=delay_s)


# Kopf's own retry after an unexpected error is 60 s; API trouble that heals (conflicts, throttling,
# 5xx, timeouts) is retried sooner, backing off exponentially so a sick API server is not hammered.
_TRANSIENT_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
_MAX_BACKOFF_S = 60.0


def backoff_s(wait_s: float, retry: int) -> float:
    """Delay before retry number `retry` (0-based) of a reconcile that hit transient API trouble."""
    return min(wait_s * 2.0 ** min(retry, 16), _MAX_BACKOFF_S)


@asynccontextmanager
async def transient_api_errors(wait_s: float, retry: int) -> AsyncIterator[None]:
    """Turn API errors that heal into a TemporaryError with exponential backoff."""
    try:
        yield
    except ApiError as exc:
        if exc.status not in _TRANSIENT_STATUSES:
            raise
        raise kopf.TemporaryError(f"API server: {exc}", delay=backoff_s(wait_s, retry)) from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise kopf.TemporaryError(
            f"API server unreachable or slow: {exc!r}", delay=backoff_s(wait_s, retry)
        ) from exc


def build_registry(config: OperatorConfig, state: OperatorState) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    deployments = _selector(MOEDEPLOYMENT)
    pools = _selector(MOEPOOL)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = kube_login(**kwargs)
        if info is not None:
            state.connect(info)
        return info

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await state.close()

    @kopf.on.probe(registry=registry, id="reconciles")
    def reconciles(**_: Any) -> dict[str, int]:
        return dict(state.counters.reconciles)

    @kopf.on.probe(registry=registry, id="writes")
    def writes(**_: Any) -> dict[str, int]:
        return dict(state.counters.writes)

    def by_name(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
        return {(namespace or "", name): snapshot(body)}

    for kind in CACHED_KINDS:
        labels = None if kind is MOEPOOL else MANAGED
        kopf.index(*_selector(kind), id=index_id(kind), registry=registry, labels=labels)(by_name)

    @kopf.on.resume(*deployments, id="reconcile", registry=registry)
    @kopf.on.create(*deployments, id="reconcile", registry=registry)
    @kopf.on.update(*deployments, id="reconcile", registry=registry)
    async def deployment_changed(body: kopf.Body, retry: int, **kwargs: Any) -> None:
        try:
            async with transient_api_errors(config.wait_s, retry):
                outcome = await reconcile_deployment(state.context(kwargs), body)
        except KindNotServed as exc:
            state.warn_once(body, "KindNotServed", str(exc))
            raise kopf.TemporaryError(str(exc), delay=4 * config.wait_s) from exc
        _raise_for(outcome, config.wait_s)

    @kopf.timer(*deployments, id="resync", interval=config.resync_s, registry=registry)
    async def deployment_resync(body: kopf.Body, **kwargs: Any) -> None:
        # The level-triggered safety net: repairs drift and refreshes status. It never raises for
        # an invalid spec (kopf would stop the timer); the change handlers report that.
        await reconcile_deployment(state.context(kwargs), body)

    @kopf.on.delete(*deployments, id="redis-cleanup", registry=registry)
    async def deployment_deleted(
        name: str,
        namespace: str | None,
        retry: int,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        **_: Any,
    ) -> None:
        namespace = namespace or ""
        state.locks.forget(MOEDEPLOYMENT, namespace, name)
        if not config.redis_url:
            return
        # The pools' `moeplane pool` processes write to Redis until they stop (deregistrations,
        # fences): stop them first, so no key is written after the cleanup. Bounded: a pod that
        # never terminates does not hold the deletion hostage.
        if retry * config.wait_s < config.redis_cleanup_timeout_s:
            left = await _stop_pools(state.api, namespace, name)
            if left:
                raise kopf.TemporaryError(
                    f"waiting for {left} pod(s) of the pools to stop before cleaning Redis",
                    delay=min(config.wait_s, 1.0),
                )
        try:
            deleted = await delete_deployment_keys(config.redis_url, namespace, name)
        except (redis.RedisError, OSError) as exc:
            # Redis is a cache: never hold a deletion hostage to it for long.
            if retry * config.wait_s < config.redis_cleanup_timeout_s:
                raise kopf.TemporaryError(
                    f"Redis unreachable, keys not cleaned yet: {exc}", delay=config.wait_s
                ) from exc
            logger.warning(f"gave up cleaning Redis keys of {namespace}/{name} after {retry} tries: {exc}")
            return
        logger.info(f"deleted {deleted} Redis keys of {namespace}/{name}")

    @kopf.on.resume(*pools, id="reconcile", registry=registry)
    @kopf.on.create(*pools, id="reconcile", registry=registry)
    @kopf.on.update(*pools, id="reconcile", registry=registry)
    async def pool_changed(body: kopf.Body, retry: int, **kwargs: Any) -> None:
        try:
            async with transient_api_errors(config.wait_s, retry):
                summary = await reconcile_pool(state.context(kwargs), body)
        except SpecInvalid as exc:
            raise kopf.PermanentError("; ".join(exc.messages)) from None
        except KindNotServed as exc:
            state.warn_once(body, "KindNotServed", str(exc))
            raise kopf.TemporaryError(str(exc), delay=4 * config.wait_s) from exc
        # A deployment's pool has its status refreshed by the deployment's reconcile (which waits,
        # and resyncs), so 100 deployments do not mean 300 retry loops here. A pool made by hand is
        # refused with an Event and its status (reconcile_pool): nothing to wait for either.
        del summary

    return registry


__all__ = ["ApiError", "OperatorState", "build_registry", "make_settings"]
