"""The k8s_e2e tier: what the operator generates, run for real (issue 16, "The end-to-end test").

One stack per module (tests/k8s_e2e/stack.py): the emulated API server and the real kubectl, the
real operator, the pod runner of tests/kube/podrunner playing KubeRay and the kubelet, and a Redis.
The numbered steps share it, in order. `MOEPLANE_E2E_MANIFEST` names the MoEDeployment to run
(default tests/k8s_e2e/tiny-e2e.yaml); `MOEPLANE_E2E_REPORT` names the JSON report to write.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s_e2e.report import E2EReport
from tests.k8s_e2e.stack import E2EStack, e2e_stack
from tests.kube.podrunner.sandbox import unavailable

MANIFEST_ENV = "MOEPLANE_E2E_MANIFEST"
DEFAULT_MANIFEST = Path(__file__).with_name("tiny-e2e.yaml")


@pytest.fixture(scope="session")
def e2e_report() -> Iterator[E2EReport]:
    report = E2EReport()
    yield report
    report.write()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EStack]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"the pod runner cannot run pods on this machine: {reason}")
    manifest = Path(os.environ.get(MANIFEST_ENV) or DEFAULT_MANIFEST)
    with e2e_stack(tmp_path_factory.mktemp("k8s-e2e"), manifest) as running:
        yield running
