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
