"""Act (and read the CRs) on Kubernetes with the official client: list/watch MoEDeployments,
read each pool's size, PATCH the MoEPool scale subresource, record the last decision in the
MoEDeployment's status and patch its spec for the dashboard's Apply.

The client is synchronous; the service calls it from worker threads (`asyncio.to_thread`).
Every call here is one the chart's planner ClusterRole grants (tests/planner/api_calls.json).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from moeplane.api.enums import Role
from moeplane.api.spec import GROUP, VERSION
from moeplane.operator.names import pool_name
from moeplane.planner.observe import PoolGroups

log = logging.getLogger(__name__)

DEPLOYMENTS = "moedeployments"
POOLS = "moepools"
AUDIT_ANNOTATION = "moeplane.io/last-sla-change"


class KubeError(RuntimeError):
    """An API call that failed: names the object and the status."""


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]


class KubeClient:
    """Thin wrapper over `CustomObjectsApi` for moeplane's two kinds."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._api_client = api_client
        self.custom: Any = client.CustomObjectsApi(api_client)  # its stubs type every body as object

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeClient:
        """In-cluster service account if there is one, else the kubeconfig (`KUBECONFIG`)."""
        from kubernetes import config

        if kubeconfig is None:
            try:
                config.load_incluster_config()
                from kubernetes import client

                return cls(client.ApiClient())
            except config.ConfigException:
                pass
        return cls(config.new_client_from_config(config_file=kubeconfig))

    def close(self) -> None:
        self._api_client.close()

    # ---- reads ------------------------------------------------------------------------------
    def list_objects(self, plural: str, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        """Every object of `plural` (moedeployments or moepools) and the list's resourceVersion."""
        out: dict[str, Any]
        if namespace is None:
            out = self.custom.list_cluster_custom_object(GROUP, VERSION, plural)
        else:
            out = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        return list(out.get("items", [])), str(out.get("metadata", {}).get("resourceVersion", ""))

    def watch_objects(
        self,
        plural: str,
        namespace: str | None,
        resource_version: str,
        timeout_s: int,
        stop: Callable[[], bool],
    ) -> Iterator[WatchEvent]:
        """Events after `resource_version` until `timeout_s` passes or `stop()` says so."""
        from kubernetes import watch

        w = watch.Watch()
        if namespace is None:
            fn: Any = self.custom.list_cluster_custom_object
            args: tuple[Any, ...] = (GROUP, VERSION, plural)
        else:
            fn = self.custom.list_namespaced_custom_object
            args = (GROUP, VERSION, namespace, plural)
        try:
            for event in w.stream(fn, *args, resource_version=resource_version, timeout_seconds=timeout_s):
                yield WatchEvent(str(event["type"]), event["object"])
                if stop():
                    break
        finally:
            w.stop()

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            f"get MoEDeployment {namespace}/{name}",
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            DEPLOYMENTS,
            name,
        )

    def pool_groups(self, namespace: str, deployment: str, role: Role) -> PoolGroups | None:
        """The pool's desired (spec.replicas) and ready groups; None before the operator made it."""
        from kubernetes.client.exceptions import ApiException

        name = pool_name(deployment, role)
        pool: dict[str, Any]
        try:
            pool = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, POOLS, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubeError(f"get MoEPool {namespace}/{name}: {exc.status} {exc.reason}") from exc
        status = pool.get("status") or {}
        return PoolGroups(
            desired=int(pool.get("spec", {}).get("replicas", 0)),
            ready=int(status.get("readyGroups", 0)),
        )

    # ---- writes -----------------------------------------------------------------------------
    def scale_pool(self, namespace: str, deployment: str, role: Role, groups: int) -> int:
        """PATCH the pool's /scale to `groups`; returns the replicas it had before."""
        name = pool_name(deployment, role)
        scale = self._call(
            f"get MoEPool {namespace}/{name}/scale",
            self.custom.get_namespaced_custom_object_scale,
            GROUP,
            VERSION,
            namespace,
            POOLS,
            name,
        )
        before = int((scale.get("spec") or {}).get("replicas", 0))
        if before != groups:
            self._call(
                f"patch MoEPool {namespace}/{name}/scale",
                self.custom.patch_namespaced_custom_object_scale,
                GROUP,
                VERSION,
                namespace,
                POOLS,
                name,
                {"spec": {"replicas": groups}},
            )
        return before

    def patch_spec(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of the MoEDeployment (spec and metadata)."""
        return self._call(
            f"patch MoEDeployment {namespace}/{name}",
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            DEPLOYMENTS,
            name,
            patch,
        )

    def patch_last_decision(self, namespace: str, name: str, last_decision: dict[str, Any]) -> None:
        self._call(
            f"patch MoEDeployment {namespace}/{name}/status",
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            DEPLOYMENTS,
            name,
            {"status": {"lastDecision": last_decision}},
        )

    @staticmethod
    def _call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args)
        except ApiException as exc:
            raise KubeError(f"{what}: {exc.status} {exc.reason}: {exc.body}") from exc
