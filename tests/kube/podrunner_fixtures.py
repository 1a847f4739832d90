"""Fixtures of the pod runner for tests that run pods (tests/kube, tests/k8s_e2e)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.kube.cluster import EmulatedCluster
from tests.kube.podrunner.images import Images, venv_image
from tests.kube.podrunner.runner import PodRunner
from tests.kube.podrunner.sandbox import unavailable

TEST_IMAGE = "podrunner.test/python:3"  # this checkout's Python, no entrypoint


@contextmanager
def running_pods(cluster: EmulatedCluster, **options: Any) -> Iterator[PodRunner]:
    """A PodRunner on `cluster` (pods may use TEST_IMAGE); no process of it may outlive it."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"pods cannot run on this machine: {reason}")
    images = Images()
    images.register(TEST_IMAGE, venv_image(entrypoint=None))
    runner = PodRunner(cluster, images, **{"teardown_grace_s": 2.0, **options}).start()
    try:
        yield runner
    finally:
        runner.stop()
        left = runner.processes()
        assert not left, f"processes outlived the pod runner: {left}"


@pytest.fixture
def pod_runner(kube_cluster: EmulatedCluster) -> Iterator[PodRunner]:
    with running_pods(kube_cluster) as runner:
        yield runner


def apply(cluster: EmulatedCluster, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects))


def pods(cluster: EmulatedCluster, namespace: str = "default", selector: str = "") -> list[dict[str, Any]]:
    args = ["get", "pods", "-n", namespace, "-o", "json"]
    if selector:
        args += ["-l", selector]
    return list(json.loads(cluster.kubectl(*args).stdout)["items"])


def ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or ()
    )


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        if status["name"] == name:
            return dict(status)
    return {}
