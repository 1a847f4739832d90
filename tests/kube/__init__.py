"""An emulated Kubernetes API server for tests, built on kmock's KubernetesEmulator.

No kube-apiserver can run on the CI machines, so this package emulates the parts of one that the
operator, the planner's dashboard and the Helm chart's `kubectl apply` test rely on:

- object metadata (`uid`, `resourceVersion`, `generation`, `creationTimestamp`) and 409 Conflict
  on a stale `resourceVersion`;
- the `status` and `scale` subresources;
- CRD registration (`kubectl apply -f crds/`) that serves the new resource, its discovery and
  `/openapi/v3`, and validates objects against the CRD's schema and CEL rules;
- LIST/WATCH (JSON lines with `Content-Type: application/json`), GET, POST, PUT, and merge,
  JSON and strategic-merge patches;
- finalizers and garbage collection by owner reference;
- a bounded request log with the caller's identity (a bearer token per user).

Entry points: `EmulatedCluster` (runs the server in its own thread, writes a kubeconfig and runs
the real `kubectl`), `KubeRayDriver` (plays KubeRay by setting RayCluster status), and the pytest
fixtures in `tests.kube.plugin`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiCall", "EmulatedCluster", "KubeRayDriver", "kubectl_binary"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one module of the package (the pure store in unit tests) does not
    # start importing aiohttp, kmock and kubectl helpers.
    if name in ("ApiCall", "EmulatedCluster", "kubectl_binary"):
        from tests.kube import cluster

        return getattr(cluster, name)
    if name == "KubeRayDriver":
        from tests.kube.kuberay import KubeRayDriver

        return KubeRayDriver
    raise AttributeError(name)
