"""RBAC is derived from observed use.

The operator's and the planner's test suites record every API call (verb, group, resource) their
component makes against the emulated API server (tests/kube/recording.py). The chart's
ClusterRoles must grant each recorded call, and nothing beyond the recorded calls and Kopf's
standard needs. The operator's rules are generated into the chart from
`moeplane.operator.rbac.RULES` (`make crds`); the chart must say exactly what RULES say per mode.

Recordings are committed files, so this check does not depend on test order or on an earlier run
(tests/charts runs before tests/operator): a JSON list of `{"verb", "group", "resource"}` objects
(resource as `plural` or `plural/subresource`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from moeplane.operator import rbac

from tests.charts.chartkit import ROOT, Call, expand, grants, pick, render
from tests.kube.recording import RECORDINGS, RecordingError, load_calls

pytestmark = pytest.mark.unit

PEERING: frozenset[Call] = frozenset(
    (verb, "kopf.dev", resource)
    for verb in ("list", "watch", "patch")
    for resource in ("kopfpeerings", "clusterkopfpeerings")
)

# What Kopf itself does whatever the handlers: discover CRDs and namespaces, post events about
# handler progress, and (with peering) watch its peering object and keep it alive. Kopf posts
# core/v1 Events only, never events.k8s.io, and never reads a peering object with `get`.
KOPF_STANDARD: frozenset[Call] = (
    frozenset(
        {
            ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
            ("watch", "apiextensions.k8s.io", "customresourcedefinitions"),
            ("list", "", "namespaces"),
            ("watch", "", "namespaces"),
            ("create", "", "events"),
        }
    )
    | PEERING
)

# Checked by the API server's admission plugins on the operator's behalf, never called (so never
# recorded): `update` on the owners' finalizers (OwnerReferencesPermissionEnforcement).
ADMISSION: frozenset[Call] = frozenset().union(*(r.calls() for r in rbac.RULES if r.admission_only))

MODES: dict[str, dict[str, Any]] = {
    "cluster-wide": {},
    "cluster-wide-peering": {"operator": {"peering": {"enabled": True}}},
    "namespaced": {"operator": {"namespaces": ["llm-prod"]}},
    "namespaced-peering": {"operator": {"namespaces": ["llm-prod"], "peering": {"enabled": True}}},
}


def recording(component: str) -> set[Call]:
    path = RECORDINGS[component]
    if not path.exists():
        pytest.skip(
            f"no recording of the {component}'s API calls yet: its test suite must commit "
            f"{path.relative_to(ROOT)} (run it with MOEPLANE_RECORD_API_CALLS=1 to write it)"
        )
    return load_calls(path)


@pytest.mark.parametrize("mode", list(MODES))
def test_no_wildcards_and_only_reads_cluster_wide(mode: str) -> None:
    manifests = render(MODES[mode])
    for role in pick(manifests, "ClusterRole"):
        for rule in role.obj["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"{role.name}: wildcard in {key}"
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
    cluster = expand(
        next(m.obj for m in pick(manifests, "ClusterRole") if m.name.endswith("-operator-cluster"))["rules"]
    )
    assert {verb for verb, group, _ in cluster if group != "kopf.dev"} <= {"list", "watch"}


@pytest.mark.parametrize("mode", list(MODES))
def test_bindings_point_at_rendered_roles_and_accounts(mode: str) -> None:
    manifests = render(MODES[mode])
    roles = {("ClusterRole", None, m.name) for m in pick(manifests, "ClusterRole")}
    roles |= {("Role", m.namespace, m.name) for m in pick(manifests, "Role")}
    accounts = {(m.namespace, m.name) for m in pick(manifests, "ServiceAccount")}
    bindings = pick(manifests, "ClusterRoleBinding") + pick(manifests, "RoleBinding")
    assert bindings
    for binding in bindings:
        ref = binding.obj["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        # A RoleBinding binds the Role of its own namespace; a ClusterRoleBinding a ClusterRole.
        expected = "Role" if binding.kind == "RoleBinding" else "ClusterRole"
        assert ref["kind"] == expected, binding.name
        assert (ref["kind"], binding.namespace if expected == "Role" else None, ref["name"]) in roles
        for subject in binding.obj["subjects"]:
            assert (subject["namespace"], subject["name"]) in accounts
    # Each workload runs as its own account.
    for m in pick(manifests, "Deployment"):
        assert m.obj["spec"]["template"]["spec"]["serviceAccountName"] == m.name


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    manifests = render({"rbac": {"create": False}})
    assert not [m for m in manifests if m.obj["apiVersion"].startswith("rbac.authorization.k8s.io/")]
    assert {m.name for m in pick(manifests, "ServiceAccount")} >= {"moeplane-operator", "moeplane-planner"}


@pytest.mark.parametrize("mode", list(MODES))
def test_operator_role_says_what_the_operator_declares(mode: str) -> None:
    values = MODES[mode].get("operator", {})
    peering = bool(values.get("peering", {}).get("enabled"))
    namespaced = bool(values.get("namespaces"))
    manifests = render(MODES[mode])
    roles = {m.name: expand(m.obj["rules"]) for m in pick(manifests, "ClusterRole")}
    namespaced_roles = [m for m in pick(manifests, "Role") if m.name == "moeplane-operator"]
    if namespaced:
        # Served namespaces only: a Role in each, and no cluster-wide grant of the namespaced rules.
        assert "moeplane-operator" not in roles
        assert {m.namespace for m in namespaced_roles} == set(values["namespaces"])
        roles["moeplane-operator"] = expand(namespaced_roles[0].obj["rules"])
    else:
        assert not namespaced_roles
    declared = rbac.rules_for(peering, namespaced)
    roles_by_scope = {
        "moeplane-operator": rbac.Scope.NAMESPACED,
        "moeplane-operator-cluster": rbac.Scope.CLUSTER,
    }
    for name, scope in roles_by_scope.items():
        wanted = set().union(*(rule.calls() for rule in declared if rule.scope is scope))
        assert roles[name] == wanted, (
            f"{mode}: {name} drifted from moeplane.operator.rbac.RULES (run `make crds`): "
            f"extra {sorted(roles[name] - wanted)}, lacking {sorted(wanted - roles[name])}"
        )
    peering_calls = grants(manifests, "operator") & PEERING
    if not peering:
        assert not peering_calls
    else:
        resource = "kopfpeerings" if namespaced else "clusterkopfpeerings"
        assert peering_calls == {call for call in PEERING if call[2] == resource}


@pytest.mark.parametrize("component", list(RECORDINGS))
def test_every_recorded_call_is_granted(component: str) -> None:
    observed = recording(component)
    assert observed, f"{RECORDINGS[component]} is empty"
    available = grants(render(), component)
    if observed & PEERING:
        for mode in ("cluster-wide-peering", "namespaced-peering"):
            available |= grants(render(MODES[mode]), component)
    missing = sorted(observed - available)
    assert not missing, f"the chart does not grant the {component} these recorded calls: {missing}"


@pytest.mark.parametrize("component", list(RECORDINGS))
def test_nothing_is_granted_beyond_recorded_use(component: str) -> None:
    observed = recording(component)
    allowed = observed | (KOPF_STANDARD | ADMISSION if component == "operator" else frozenset())
    for mode, values in MODES.items():
        extra = sorted(grants(render(values), component) - allowed)
        assert not extra, f"{mode}: the chart grants the {component} calls no test ever made: {extra}"


def test_the_checks_catch_a_missing_and_an_extra_grant(tmp_path: Path) -> None:
    """The comparison itself: a recording with a call the chart lacks, and a chart rule no
    recording justifies, are both reported."""
    granted = grants(render(), "operator")
    lacking = ("deletecollection", "", "secrets")
    path = tmp_path / "calls.json"
    path.write_text(
        json.dumps(
            [{"verb": v, "group": g, "resource": r} for v, g, r in sorted(granted)]
            + [{"verb": lacking[0], "group": lacking[1], "resource": lacking[2]}]
        )
    )
    observed = load_calls(path)
    assert ("watch", "moeplane.io", "moedeployments") in granted
    assert observed - granted == {lacking}
    assert grants(render({"rbac": {"create": False}}), "operator") == set()
    extra = grants(render({"operator": {"peering": {"enabled": True}}}), "operator") - granted
    assert extra and extra <= KOPF_STANDARD
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"verb": "get", "group": ""}]))
    with pytest.raises(RecordingError, match=r"bad.json\[0\]: missing \['resource'\]"):
        load_calls(bad)
