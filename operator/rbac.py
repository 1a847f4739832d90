"""The API permissions the operator needs, as data: the one source of the Helm chart's operator
ClusterRoles (`chart_rules_template` is generated into the chart by `make crds`), and what the
operator's tests check every call it makes against.

RBAC is derived from observed use: each rule grants what the operator's test suite records it
calling (tests/operator/api_calls.json) plus what Kopf itself needs (CRD and namespace discovery,
events, peering); tests/charts/test_chart_rbac.py holds the chart to exactly that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from moeplane.operator.names import DOMAIN


class Scope(Enum):
    """Where a rule is bound: in each served namespace, or cluster-wide (cluster-scoped kinds)."""

    NAMESPACED = "namespaced"
    CLUSTER = "cluster"


class When(Enum):
    """Which operator modes need a rule: always, or only with Kopf peering (not --standalone),
    whose peering object is a namespaced KopfPeering when the operator serves listed namespaces
    and a ClusterKopfPeering when it serves the whole cluster."""

    ALWAYS = "always"
    PEERING_NAMESPACED = "peeringNamespaced"
    PEERING_CLUSTER_WIDE = "peeringClusterWide"


@dataclass(frozen=True)
class PolicyRule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    scope: Scope = Scope.NAMESPACED
    when: When = When.ALWAYS
    # Checked by the API server on the operator's behalf, never called by it (so never recorded):
    # OwnerReferencesPermissionEnforcement asks for `update` on the owner's finalizers subresource
    # before it lets a child carry blockOwnerDeletion.
    admission_only: bool = False

    def allows(self, verb: str, group: str, resource: str) -> bool:
        return group in self.api_groups and resource in self.resources and verb in self.verbs

    def calls(self) -> set[tuple[str, str, str]]:
        """(verb, group, resource) of every request the rule allows."""
        return {(v, g, r) for g in self.api_groups for r in self.resources for v in self.verbs}

    def to_wire(self) -> dict[str, Any]:
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


# Children the reconcile reads from Kopf's watch cache: watched and listed by Kopf; created and
# patched (diff-only) by the reconcile, which reads one (`get`) only when its create conflicts
# with a child the cache has not seen yet. They go away by garbage collection, never by a delete.
# Secrets are not among them: the operator writes its own and reads none.
_CACHED_CHILD = ("get", "list", "watch", "create", "patch")

RULES: tuple[PolicyRule, ...] = (
    PolicyRule(
        (DOMAIN,),
        ("moedeployments",),
        ("list", "watch", "patch"),
        "The user's MoEDeployments: watched; Kopf's progress annotations and the finalizer patched.",
    ),
    PolicyRule((DOMAIN,), ("moepools",), _CACHED_CHILD, "One MoEPool per role, watched by the operator."),
    PolicyRule(
        (DOMAIN,),
        ("moedeployments/status", "moepools/status"),
        ("patch",),
        "Status is computed from what is observed and patched only when it changed.",
    ),
    PolicyRule(
        (DOMAIN,),
        ("moedeployments/finalizers", "moepools/finalizers"),
        ("update",),
        "OwnerReferencesPermissionEnforcement: children owned (blockOwnerDeletion) by a "
        "MoEDeployment or MoEPool.",
        admission_only=True,
    ),
    PolicyRule(
        ("ray.io",),
        ("rayclusters",),
        ("get", "list", "create", "patch", "delete"),
        "Each pool's RayClusters are listed fresh, never cached (read back on a create conflict); a "
        "rollout deletes old revisions.",
    ),
    PolicyRule(
        ("",),
        ("pods",),
        ("list",),
        "A pool's worker pods, listed fresh: which pods hold which EP group (KubeRay's replica "
        "labels), so a scale-down or rollout removes exactly the drained group's pods "
        "(scaleStrategy.workersToDelete), and why a new revision's pods do not schedule.",
    ),
    PolicyRule(
        ("",),
        ("configmaps", "services"),
        _CACHED_CHILD,
        "Engine and placement ConfigMaps, worker and frontend Services.",
    ),
    PolicyRule(("apps",), ("deployments",), _CACHED_CHILD, "The frontend Deployment."),
    PolicyRule(
        ("",),
        ("secrets",),
        ("create", "patch"),
        "Each MoEDeployment's Secret (workers' gRPC token, Redis URL): created, and patched without "
        "its token; no Secret is ever read.",
    ),
    PolicyRule(
        ("",), ("events",), ("create",), "Events: the Invalid-spec warning and Kopf's handler failures."
    ),
    PolicyRule(
        ("apiextensions.k8s.io",),
        ("customresourcedefinitions",),
        ("list", "watch"),
        "Kopf discovers the served resources at run time (CRDs come and go).",
        scope=Scope.CLUSTER,
    ),
    PolicyRule(
        ("",),
        ("namespaces",),
        ("list", "watch"),
        "Kopf scans namespaces at run time.",
        scope=Scope.CLUSTER,
    ),
    PolicyRule(
        ("kopf.dev",),
        ("kopfpeerings",),
        ("list", "watch", "patch"),
        "Kopf peering, namespaced mode: keep-alives in each served namespace's KopfPeering.",
        when=When.PEERING_NAMESPACED,
    ),
    PolicyRule(
        ("kopf.dev",),
        ("clusterkopfpeerings",),
        ("list", "watch", "patch"),
        "Kopf peering, cluster-wide mode: keep-alives in the ClusterKopfPeering.",
        scope=Scope.CLUSTER,
        when=When.PEERING_CLUSTER_WIDE,
    ),
)


def allowed(verb: str, group: str, resource: str) -> bool:
    return any(rule.allows(verb, group, resource) for rule in RULES)


def rules_for(peering: bool, namespaced: bool) -> tuple[PolicyRule, ...]:
    """The rules one operator mode needs (`namespaced`: it serves listed namespaces)."""
    modes = {When.ALWAYS}
    if peering:
        modes.add(When.PEERING_NAMESPACED if namespaced else When.PEERING_CLUSTER_WIDE)
    return tuple(rule for rule in RULES if rule.when in modes)


def cluster_role(name: str = "moeplane-operator") -> dict[str, Any]:
    """Every rule in one ClusterRole (for a cluster admin who binds the operator by hand)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [rule.to_wire() for rule in RULES],
    }


# ---- the chart ------------------------------------------------------------------------------------
def template_name(scope: Scope, when: When) -> str:
    """The chart's named template holding the rules of one scope and mode."""
    suffix = "" if when is When.ALWAYS else f"{when.value[0].upper()}{when.value[1:]}"
    return f"moeplane.operatorRules.{scope.value}{suffix}"


def _rule_yaml(rule: PolicyRule) -> list[str]:
    return [
        f"# {rule.why}",
        f"- apiGroups: {json.dumps(list(rule.api_groups))}",
        f"  resources: {json.dumps(list(rule.resources))}",
        f"  verbs: {json.dumps(list(rule.verbs))}",
    ]


def chart_rules_template(generated_by: str) -> str:
    """The chart's `templates/_operator_rules.tpl`: one named template per (scope, mode) holding
    the rules as a YAML list, which `templates/rbac.yaml` includes into the operator's roles."""
    lines = ["{{- /*", f"{generated_by}", "The rules are moeplane.operator.rbac.RULES. */ -}}"]
    for scope in Scope:
        for when in When:
            rules = [r for r in RULES if r.scope is scope and r.when is when]
            lines.append(f'{{{{- define "{template_name(scope, when)}" -}}}}')
            for rule in rules:
                lines += _rule_yaml(rule)
            lines.append("{{- end }}")
    return "\n".join(lines) + "\n"
