"""The kinds the operator reads and writes, with their API paths."""

from __future__ import annotations

from dataclasses import dataclass

from moeplane.api.spec import GROUP, VERSION


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def kopf_resource(self) -> str:
        """`plural.version.group` as kopf selects resources."""
        return f"{self.plural}.{self.version}.{self.group}" if self.group else f"{self.plural}.{self.version}"

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            prefix += f"/namespaces/{namespace}"
        path = f"{prefix}/{self.plural}"
        if name:
            path += f"/{name}"
            if subresource:
                path += f"/{subresource}"
        return path


MOEDEPLOYMENT = Kind(GROUP, VERSION, "moedeployments", "MoEDeployment")
MOEPOOL = Kind(GROUP, VERSION, "moepools", "MoEPool")
RAYCLUSTER = Kind("ray.io", "v1", "rayclusters", "RayCluster")
CONFIGMAP = Kind("", "v1", "configmaps", "ConfigMap")
SERVICE = Kind("", "v1", "services", "Service")
DEPLOYMENT = Kind("apps", "v1", "deployments", "Deployment")
SECRET = Kind("", "v1", "secrets", "Secret")
EVENT = Kind("", "v1", "events", "Event")
POD = Kind("", "v1", "pods", "Pod")

CHILD_KINDS: tuple[Kind, ...] = (MOEPOOL, RAYCLUSTER, CONFIGMAP, SERVICE, DEPLOYMENT, SECRET)
# Children read from kopf's watch cache. RayClusters are not: their status decides readiness, so
# each pool reconcile lists them fresh (one request) rather than trusting a cache that can lag.
# Secrets are not watched either: the operator creates and patches its own and reads none.
CACHED_KINDS: tuple[Kind, ...] = (MOEPOOL, CONFIGMAP, SERVICE, DEPLOYMENT)
