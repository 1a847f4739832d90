"""The operator's declared permissions (the Helm chart's ClusterRole is checked against them)."""

from __future__ import annotations

import pytest
from moeplane.operator import rbac

pytestmark = pytest.mark.unit


def test_rules_render_as_a_cluster_role() -> None:
    role = rbac.cluster_role()
    assert role["kind"] == "ClusterRole" and role["rules"]
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"} and all(rule.values())


def test_least_privilege() -> None:
    assert rbac.allowed("patch", "moeplane.io", "moepools/status")
    assert rbac.allowed("delete", "ray.io", "rayclusters")  # a rollout retires old revisions
    # Other children go by garbage collection: the operator never deletes them itself.
    assert not rbac.allowed("delete", "", "configmaps")
    assert not rbac.allowed("delete", "moeplane.io", "moedeployments")
    # Each deployment's Secret is made and patched, never deleted (GC) nor replaced wholesale.
    assert rbac.allowed("create", "", "secrets") and rbac.allowed("patch", "", "secrets")
    assert not rbac.allowed("delete", "", "secrets") and not rbac.allowed("update", "", "secrets")


def test_no_secret_is_readable_and_owners_finalizers_are_updatable() -> None:
    for verb in ("get", "list", "watch"):
        assert not rbac.allowed(verb, "", "secrets"), verb
    # OwnerReferencesPermissionEnforcement: children with blockOwnerDeletion need `update` on the
    # owner's finalizers; the API server checks it, the operator never calls it.
    for resource in ("moedeployments/finalizers", "moepools/finalizers"):
        assert rbac.allowed("update", "moeplane.io", resource)
    assert {r.resources for r in rbac.RULES if r.admission_only} == {
        ("moedeployments/finalizers", "moepools/finalizers")
    }
    assert rbac.allowed("get", "ray.io", "rayclusters")  # read back after a create conflict
