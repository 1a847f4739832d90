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
from moeplane.operator.context import Context
from moeplane.operator.handlers import OperatorState
from moeplane.operator.reconcile import reconcile_deployment, reconcile_pool

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

        # The Secret is never read: a restarted operator (a fresh state) creates it blindly, and on
        # the conflict patches all but the token back.
        secret = cluster.get("v1", "Secret", "deepseek-r1-secret", "default")
        secret["metadata"]["annotations"] = {}
        secret["metadata"]["labels"] = {}
        cluster.kubectl("replace", "-f", "-", input=json.dumps(secret))
        await reconcile_deployment(state.context({}), body)
        assert cluster.get("v1", "Secret", "deepseek-r1-secret", "default")["metadata"]["labels"] == {}
        await state.close()
        state = OperatorState(OperatorConfig(**FAST))
        state.connect(info)
        await reconcile_deployment(state.context({}), body)
    finally:
        await state.close()
    secret = cluster.get("v1", "Secret", "deepseek-r1-secret", "default")
    assert secret["metadata"]["labels"][names.MANAGED_BY] == names.MANAGER
    assert names.DESIRED_HASH in secret["metadata"]["annotations"]

    # A RayCluster list that lags a create (its create conflicts): read back with `get`, patched.
    state = OperatorState(OperatorConfig(**FAST))
    state.connect(info)
    live = cluster.get("ray.io/v1", "RayCluster", rc["metadata"]["name"], "default")
    live["metadata"]["annotations"] = {}
    cluster.kubectl("replace", "-f", "-", input=json.dumps(live))

    async def lagging(self: Context, namespace: str, pool_label: str) -> list[dict[str, object]]:
        return []

    monkeypatch.setattr(Context, "rayclusters", lagging)
    try:
        pool = cluster.get("moeplane.io/v1alpha1", "MoEPool", "deepseek-r1-prefill", "default")
        await reconcile_pool(state.context({}), pool)
    finally:
        await state.close()
    assert ("get", "ray.io", "rayclusters") in cluster.rbac_seen("operator")

    for resource, (api_version, kind, name) in CHILDREN.items():
        live = cluster.get(api_version, kind, name or rc["metadata"]["name"], "default")
        assert names.DESIRED_HASH in live["metadata"]["annotations"], f"{resource}: drift not repaired"
    # The Secret kept its token, and no Secret was ever read.
    assert secret["data"]["grpc-token"] == token
    seen = cluster.rbac_seen("operator")
    secret_calls = {call for call in seen if call[2] == "secrets"}
    assert secret_calls == {("create", "", "secrets"), ("patch", "", "secrets")}
    for resource in CHILDREN:
        group = GROUPS.get(resource, "")
        assert ("get", group, resource) in seen, resource
        assert ("patch", group, resource) in seen, resource
