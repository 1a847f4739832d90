"""The API permissions the operator needs, as data: the Helm chart's ClusterRole is rendered from
(or checked against) these rules, and the operator tests check every call the operator makes
against them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moeplane.operator.names import DOMAIN


@dataclass(frozen=True)
class PolicyRule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def allows(self, verb: str, group: str, resource: str) -> bool:
        return group in self.api_groups and resource in self.resources and verb in self.verbs

    def to_wire(self) -> dict[str, Any]:
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


# Children are watched (kopf's cache), created and patched; they go away by garbage collection,
# so only RayClusters (retired by a rollout) are ever deleted, and they are listed, not watched.
_CACHED_CHILD = ("get", "list", "watch", "create", "patch")

RULES: tuple[PolicyRule, ...] = (
    # The user's objects: watched, annotated by kopf (progress, finalizer), status written.
    PolicyRule((DOMAIN,), ("moedeployments",), ("get", "list", "watch", "patch")),
    PolicyRule((DOMAIN,), ("moepools",), _CACHED_CHILD),
    PolicyRule((DOMAIN,), ("moedeployments/status", "moepools/status"), ("get", "patch")),
    # The children.
    PolicyRule(("ray.io",), ("rayclusters",), ("get", "list", "create", "patch", "delete")),
    PolicyRule(("",), ("configmaps", "services"), _CACHED_CHILD),
    PolicyRule(("apps",), ("deployments",), _CACHED_CHILD),
    # Events: the Invalid-spec warning and kopf's handler failures.
    PolicyRule(("", "events.k8s.io"), ("events",), ("create",)),
    # kopf: resource discovery, namespace scanning, and peering when not --standalone.
    PolicyRule(("apiextensions.k8s.io",), ("customresourcedefinitions",), ("list", "watch")),
    PolicyRule(("",), ("namespaces",), ("list", "watch")),
    PolicyRule(("kopf.dev",), ("kopfpeerings", "clusterkopfpeerings"), ("get", "list", "watch", "patch")),
)


def allowed(verb: str, group: str, resource: str) -> bool:
    return any(rule.allows(verb, group, resource) for rule in RULES)


def cluster_role(name: str = "moeplane-operator") -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [rule.to_wire() for rule in RULES],
    }
