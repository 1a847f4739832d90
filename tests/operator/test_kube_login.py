"""In a pod, the operator and `moeplane cleanup` reach the API server where client-go's in-cluster
config does (KUBERNETES_SERVICE_HOST/PORT), not at a hard-coded kubernetes.default.svc:443."""

from __future__ import annotations

import pytest
from moeplane.operator.kube import in_cluster_server

pytestmark = pytest.mark.unit


def test_the_service_env_names_the_api_server() -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_server(env) == "https://10.96.0.1:443"
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}) == (
        "https://[fd00::1]:6443"
    )
    assert in_cluster_server({}) is None and in_cluster_server({"KUBERNETES_SERVICE_HOST": "x"}) is None
