"""Pytest fixtures of the emulated API server, for any suite that needs a cluster.

Use them from another suite's conftest.py with
`from tests.kube.plugin import kube_cluster, kube_crds, kuberay  # noqa: F401`
(or list `tests.kube.plugin` in the root conftest's `pytest_plugins`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube.cluster import EmulatedCluster
from tests.kube.kuberay import KubeRayDriver
from tests.kube.recording import Call, component_of, recorder_for

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
USERS = ("admin", "operator", "planner", "uninstall")  # uninstall: the chart's pre-delete hook


@pytest.fixture
def kube_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EmulatedCluster]:
    """A fresh emulated API server with a kubeconfig per user (admin, operator, planner).

    In a component's own suite (tests/operator, tests/planner) the calls its user made are checked
    against the suite's committed recording at teardown (tests/kube/recording.py).
    """
    workdir = tmp_path / "kube"
    workdir.mkdir()
    component = component_of(request.node.path)
    recorder = recorder_for(request.config)
    unrecorded: list[Call] = []
    with EmulatedCluster(users=USERS, workdir=workdir) as cluster:
        yield cluster
        if component is not None:
            unrecorded = recorder.observe(component, cluster.rbac_seen(component))
    if component is not None and unrecorded:
        pytest.fail(recorder.problem(component, unrecorded), pytrace=False)


@pytest.fixture
def kube_crds(kube_cluster: EmulatedCluster) -> EmulatedCluster:
    """The cluster after `kubectl apply -f crds/` (MoEDeployment and MoEPool served)."""
    kube_cluster.kubectl("apply", "-f", str(CRDS))
    return kube_cluster


@pytest.fixture
def kuberay(kube_cluster: EmulatedCluster) -> Iterator[KubeRayDriver]:
    """RayClusters served, and a driver that plays KubeRay by setting their status."""
    driver = KubeRayDriver(kube_cluster)
    driver.install_crd()
    yield driver
    driver.stop()
