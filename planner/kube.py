"""The Kubernetes back end of the planner's adapters, over the operator's API client
(`moeplane.operator.kube.HttpKubeApi`, aiohttp with kopf's connection info): one client library
for the operator and the planner.

- `KubeDeployments` (`DeploymentSource`): lists MoEDeployments every `poll_s` seconds and turns
  the differences into events (level-triggered: a missed change is seen at the next list, and
  nothing lives in a long watch), reads one for what-if and Apply, merge-patches its spec, and
  writes `status.lastDecision`.
- `KubePools` (`PoolScaler`): reads a MoEPool's size (`spec.replicas`, `status.readyGroups`,
  a rollout from its Progressing condition or an unobserved generation) and PATCHes `/scale`.

Every call is one the chart's planner ClusterRole grants (tests/planner/api_calls.json).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kopf
from moeplane.api.enums import ConditionStatus, ConditionType, Role
from moeplane.api.spec import MoEPoolStatus
from moeplane.api.status import PlannerDecisionStatus
from moeplane.operator.kinds import MOEDEPLOYMENT, MOEPOOL
from moeplane.operator.kube import ApiError, HttpKubeApi, KubeApi
from moeplane.operator.names import pool_name
from moeplane.planner.adapters import DeploymentEvent, EventKind, SourceError, event_for
from moeplane.planner.observe import PoolGroups
from pydantic import ValidationError

log = logging.getLogger(__name__)

AUDIT_ANNOTATION = "moeplane.io/last-sla-change"
DEFAULT_POLL_S = 5.0
_TRANSIENT = (ApiError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


def connection_info(kubeconfig: str | None = None) -> kopf.ConnectionInfo:
    """The service account when running in a pod (and no kubeconfig is named), else the
    kubeconfig file (`KUBECONFIG` or ~/.kube/config when None), read by the official client's
    loader."""
    if kubeconfig is None:
        info = kopf.login_with_service_account(settings=kopf.OperatorSettings())
        if info is not None:
            return info
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    except (config.ConfigException, OSError) as exc:
        raise SourceError(f"no Kubernetes credentials: {kubeconfig or 'KUBECONFIG'}: {exc}") from None
    keys = cfg.api_key or {}
    token = keys.get("BearerToken") or keys.get("authorization") or ""
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        token=token.removeprefix("Bearer ").strip() or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        username=cfg.username or None,
        password=cfg.password or None,
    )


def _version(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class KubeDeployments:
    """MoEDeployments of `namespaces` (all when empty) as a `DeploymentSource`."""

    apply_target = "the MoEDeployment"

    def __init__(
        self, api: KubeApi, namespaces: list[str] | None = None, poll_s: float = DEFAULT_POLL_S
    ) -> None:
        self.api, self.namespaces, self.poll_s = api, list(namespaces or []), poll_s

    async def _list(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ns in self.namespaces or [""]:
            out.extend(await self.api.list(MOEDEPLOYMENT, ns))
        return out

    async def events(self) -> AsyncIterator[list[DeploymentEvent]]:
        seen: dict[tuple[str, str], str] = {}
        synced = False
        while True:
            try:
                objs = await self._list()
            except _TRANSIENT as exc:
                log.warning("listing MoEDeployments failed, retrying in %.0fs: %s", self.poll_s, exc)
                await asyncio.sleep(self.poll_s)
                continue
            now = {
                (e.namespace, e.name): (e, _version(o))
                for o in objs
                for e in [event_for(EventKind.CHANGED, o)]
            }
            if not synced:
                yield [event_for(EventKind.SYNCED, o) for o in objs]
                synced = True
            else:
                batch = [e for key, (e, v) in now.items() if seen.get(key) != v]
                batch += [DeploymentEvent(EventKind.DELETED, *key) for key in seen if key not in now]
                if batch:
                    yield batch
            seen = {key: v for key, (_, v) in now.items()}
            await asyncio.sleep(self.poll_s)

    async def get(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            obj = await self.api.get(MOEDEPLOYMENT, namespace, name)
        except _TRANSIENT as exc:
            raise SourceError(f"get MoEDeployment {namespace}/{name}: {exc}") from exc
        if obj is None:
            raise SourceError(f"MoEDeployment {namespace}/{name} not found")
        return obj

    async def patch_spec(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in patch.items() if k in ("metadata", "spec")}
        try:
            return await self.api.patch(MOEDEPLOYMENT, namespace, name, body)
        except _TRANSIENT as exc:
            raise SourceError(f"patch MoEDeployment {namespace}/{name}: {exc}") from exc

    async def record_decision(self, namespace: str, name: str, decision: PlannerDecisionStatus) -> None:
        body = {"status": {"lastDecision": decision.to_wire()}}
        try:
            await self.api.patch(MOEDEPLOYMENT, namespace, name, body, subresource="status")
        except _TRANSIENT as exc:
            raise SourceError(f"patch MoEDeployment {namespace}/{name}/status: {exc}") from exc

    async def close(self) -> None:
        if isinstance(self.api, HttpKubeApi):
            await self.api.close()


def _rolling(pool: dict[str, Any]) -> bool:
    """A rollout is under way: the pool's Progressing condition is True, or its controller has
    not observed its latest generation yet."""
    try:
        status = MoEPoolStatus.model_validate(pool.get("status") or {})
    except ValidationError:
        return False
    progressing = any(
        c.type is ConditionType.PROGRESSING and c.status is ConditionStatus.TRUE for c in status.conditions
    )
    generation = (pool.get("metadata") or {}).get("generation")
    unobserved = (
        generation is not None
        and status.observed_generation is not None
        and (status.observed_generation < int(generation))
    )
    return progressing or unobserved


class KubePools:
    """MoEPools as a `PoolScaler`: their size, and `/scale`."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    async def pool_groups(self, namespace: str, deployment: str, role: Role) -> PoolGroups | None:
        name = pool_name(deployment, role)
        try:
            pool = await self.api.get(MOEPOOL, namespace, name)
        except _TRANSIENT as exc:
            raise SourceError(f"get MoEPool {namespace}/{name}: {exc}") from exc
        if pool is None:
            return None
        status = pool.get("status") or {}
        return PoolGroups(
            desired=int((pool.get("spec") or {}).get("replicas", 0)),
            ready=int(status.get("readyGroups", 0)),
            rolling=_rolling(pool),
        )

    async def scale(self, namespace: str, deployment: str, role: Role, groups: int) -> None:
        name = pool_name(deployment, role)
        try:
            await self.api.patch(
                MOEPOOL, namespace, name, {"spec": {"replicas": groups}}, subresource="scale"
            )
        except _TRANSIENT as exc:
            raise SourceError(f"patch MoEPool {namespace}/{name}/scale: {exc}") from exc


def kube_adapters(
    kubeconfig: str | None = None, namespaces: list[str] | None = None, poll_s: float = DEFAULT_POLL_S
) -> tuple[KubeDeployments, KubePools]:
    """Both adapters over one API client."""
    api = HttpKubeApi(connection_info(kubeconfig))
    return KubeDeployments(api, namespaces, poll_s), KubePools(api)
