"""A reconcile whose watch cache has not seen the children yet (just after a start, or a watch that
lags a create): every create conflicts, so it reads the child and patches what drifted.

This is the path behind the `get` and `patch` grants on every child kind in the operator's RBAC;
the full operator takes it only when a race goes a certain way, so it is driven here through the
operator's own reconcile and API client, as the `operator` user, with an empty cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import kopf
import pytest
from moeplane.operator import names
from moeplane.operator.config import OperatorConfig
from moeplane.operator.handlers import OperatorState
from moeplane.operator.reconcile import reconcile_deployment

from tests.kube.cluster import EmulatedCluster
from tests.kube.kuberay import KubeRayDriver
from tests.operator.harness import FAST

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "deepseek-r1.yaml"
CHILDREN = {
    # resource (as RBAC names it) -> (apiVersion, kind, one child's name)
    "moepools": ("moeplane.io/v1alpha1", "MoEPool", "deepseek-r1-prefill"),
    "configmaps": ("v1", "ConfigMap", "deepseek-r1-engine"),
    "services": ("v1", "Service", "deepseek-r1-frontend"),
    "deployments": ("apps/v1", "Deployment", "deepseek-r1-frontend"),
    "secrets": ("v1", "Secret", "deepseek-r1-secret"),
    "rayclusters": ("ray.io/v1", "RayCluster", ""),
}
GROUPS = {"moepools": "moeplane.io", "rayclusters": "ray.io", "deployments": "apps"}


async def test_a_cold_cache_reads_conflicting_children_and_repairs_drift(
    kube_crds: EmulatedCluster, kuberay: KubeRayDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = kube_crds
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig("operator")))
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None
    state = OperatorState(OperatorConfig(**FAST))
    state.connect(info)
    try:
        body = cluster.get("moeplane.io/v1alpha1", "MoEDeployment", "deepseek-r1")
        await reconcile_deployment(state.context({}), body)  # creates every child
        (rc,) = [r for r in kuberay.rayclusters("default") if "prefill" in r["metadata"]["name"]]
        assert cluster.verb_counts("operator").get("get", 0) == 0
        token = cluster.get("v1", "Secret", "deepseek-r1-secret", "default")["data"]["grpc-token"]

        # Drift: one child of each kind loses the operator's hash, as a hand edit would leave it.
        for api_version, kind, name in CHILDREN.values():
            name = name or rc["metadata"]["name"]
            obj = cluster.get(api_version, kind, name, "default")
            annotations = {k: v for k, v in obj["metadata"]["annotations"].items() if k != names.DESIRED_HASH}
            obj["metadata"]["annotations"] = annotations
            cluster.kubectl("replace", "-f", "-", input=json.dumps(obj))

        await reconcile_deployment(state.context({}), body)  # a fresh context: nothing cached
    finally:
        await state.close()

    for resource, (api_version, kind, name) in CHILDREN.items():
        live = cluster.get(api_version, kind, name or rc["metadata"]["name"], "default")
        assert names.DESIRED_HASH in live["metadata"]["annotations"], f"{resource}: drift not repaired"
    # The Secret was read back on its create conflict and kept its token.
    assert cluster.get("v1", "Secret", "deepseek-r1-secret", "default")["data"]["grpc-token"] == token
    seen = cluster.rbac_seen("operator")
    for resource in CHILDREN:
        group = GROUPS.get(resource, "")
        if resource != "rayclusters":  # listed fresh each reconcile, so never a blind create
            assert ("get", group, resource) in seen, resource
        assert ("patch", group, resource) in seen, resource
