"""`helm uninstall` of the chart, as Helm's uninstall action runs it (pkg/action/uninstall.go):
pre-delete hooks in weight order, each waited for (a Job until it completes), then, once all
succeeded, deleted per their delete policy; then the release's objects.

The chart is rendered with the real Helm SDK (tests/charts/chartkit.py). In this tier the operator
is the harness's `moeplane operator` process standing for the chart's operator Deployment (and
Redis is external), so `install_release_accounts` applies what the release holds besides those
workloads (ServiceAccounts, RBAC, Secrets, ConfigMaps) for the hooks' pods to run with, and
deleting the release's objects stops the operator process, when Helm would delete its Deployment.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.charts.chartkit import Manifest, install_order, render
from tests.k8s_e2e.stack import E2EStack
from tests.kube.operator_proc import stop_process

# The tier's Redis is external to the release (tests/k8s_e2e/stack.py).
EXTERNAL_REDIS_URL = "redis://redis.external.invalid:6379/0"


def release_values(redis_url: str = EXTERNAL_REDIS_URL) -> dict[str, Any]:
    return {"redis": {"enabled": False, "external": {"url": redis_url}}}


def _weight(m: Manifest) -> int:
    return int((m.obj["metadata"].get("annotations") or {}).get("helm.sh/hook-weight", "0"))


def pre_delete_hooks(redis_url: str = EXTERNAL_REDIS_URL) -> list[Manifest]:
    manifests = render(release_values(redis_url))
    hooks = [m for m in manifests if m.hook and "pre-delete" in m.hook.split(",")]
    return sorted(hooks, key=_weight)


STOOD_IN_FOR = ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod", "Service", "NetworkPolicy")


def install_release_accounts(stack: E2EStack) -> None:
    """The release's non-workload objects, as `helm install` left them (the harness runs the rest)."""
    objects = [
        m
        for m in install_order(render(release_values(stack.redis_url)))
        if m.kind not in STOOD_IN_FOR and m.kind != "CustomResourceDefinition"
    ]
    for ns in {m.namespace or "moeplane" for m in objects}:
        _namespace(stack, ns)
    stack.cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m.obj) for m in objects))


def _namespace(stack: E2EStack, name: str) -> None:
    # `kubectl create namespace` sends protobuf, which the emulated API server does not decode.
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))


def _job_done(stack: E2EStack, m: Manifest) -> str | None:
    ns = m.namespace or "moeplane"
    job = stack.cluster.find("batch/v1", "Job", m.name, ns)
    conds = {c["type"]: c for c in ((job or {}).get("status") or {}).get("conditions") or ()}
    if "Complete" in conds:
        return "Complete"
    if "Failed" in conds:
        raise AssertionError(f"pre-delete hook Job {ns}/{m.name} failed: {conds['Failed'].get('message')}")
    return None


def helm_uninstall(stack: E2EStack, hooks: list[Manifest], timeout_s: float = 300.0) -> None:
    """Run the pre-delete hooks to completion, then remove the release (stopping its operator)."""
    for hook in hooks:
        ns = hook.namespace or "moeplane"
        _namespace(stack, ns)
        stack.cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(hook.obj))
        if hook.kind == "Job":
            deadline = time.monotonic() + timeout_s
            while _job_done(stack, hook) is None:
                assert time.monotonic() < deadline, f"pre-delete hook Job {ns}/{hook.name} did not complete"
                time.sleep(1)
    # Helm deletes the `hook-succeeded` hooks once every hook of the event succeeded (execHook's
    # second loop), not one by one: the Job's ServiceAccount must outlive the Job's pod.
    for hook in hooks:
        ns = hook.namespace or "moeplane"
        policy = (hook.obj["metadata"].get("annotations") or {}).get("helm.sh/hook-delete-policy", "")
        if "hook-succeeded" in policy:
            stack.cluster.kubectl("delete", hook.kind.lower(), hook.name, "-n", ns, "--ignore-not-found")
    # The release's objects: the operator's Deployment among them.
    stop_process(stack.operator)
    for m in reversed(install_order(render(release_values(stack.redis_url)))):
        if m.kind not in ("CustomResourceDefinition",):
            stack.cluster.kubectl(
                "delete",
                m.kind.lower(),
                m.name,
                "-n",
                m.namespace or "moeplane",
                "--ignore-not-found",
                "--wait=false",
                check=False,
            )
