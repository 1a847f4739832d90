"""Issue 16's end-to-end test: the pods the operator generates, run, in seven steps on one stack."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.k8s_e2e.embedded import PROMPTS, embedded_answers, greedy_answers
from tests.k8s_e2e.report import E2EReport
from tests.k8s_e2e.stack import MANAGED, ROOT, E2EStack
from tests.k8s_e2e.steps import Step, require_serving, run_step
from tests.kube.podrunner import kuberay_api as K

pytestmark = [pytest.mark.k8s_e2e, pytest.mark.timeout(900)]

CHECKPOINT_ENV = "MOEPLANE_E2E_CHECKPOINT"  # DIR[:CLAIM]: serve a checkpoint from a pvc:// claim

# ---- the checkpoint-on-PVC variant ------------------------------------------------------------------
def use_checkpoint_on_pvc(
    stack: E2EStack, doc: dict[str, Any], checkpoint: Path, claim: str
) -> dict[str, Any]:
    """The manifest served from a checkpoint directory on a PersistentVolumeClaim.

    TODO(issue 16, loader): enable by default once `moeplane pool` loads `pvc://` weights (today
    workers/pool/settings.py refuses them at pod start). It binds `claim` to `checkpoint` in the
    pod runner, creates the PersistentVolumeClaim and points spec.model.weights at pvc://CLAIM/.
    """
    stack.runner.register_claim(stack.namespace, claim, checkpoint)
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": stack.namespace},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(pvc))
    out = json.loads(json.dumps(doc))
    out["spec"]["model"]["weights"] = {"format": "safetensors", "uri": f"pvc://{claim}/"}
    return out


def _manifest_for_step1(stack: E2EStack) -> dict[str, Any]:
    doc = stack.manifest
    spec = os.environ.get(CHECKPOINT_ENV)
    if spec:
        directory, _, claim = spec.partition(":")
        doc = use_checkpoint_on_pvc(stack, doc, Path(directory), claim or "checkpoint")
    return doc


# ---- 1 ----------------------------------------------------------------------------------------------------
def test_1_crds_and_a_tiny_deployment_come_up(stack: E2EStack, e2e_report: E2EReport) -> None:
    with run_step(e2e_report, "1 kubectl apply crds/ and the tiny MoEDeployment", stack) as step:
        out = stack.kubectl("apply", "-f", str(ROOT / "crds")).stdout
        assert "moedeployments.moeplane.io" in out and "moepools.moeplane.io" in out
        stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(_manifest_for_step1(stack)))
        step.entry.desired_groups = stack.desired_groups()
        waited = stack.kubectl(
            "wait",
            "--for=condition=Ready",
            f"moedeployment/{stack.name}",
            "-n",
            stack.namespace,
            "--timeout=600s",
            timeout_s=630,
            check=False,
        )
        if waited.returncode != 0:
            ready = stack.get_json("moedeployment", stack.name).get("status", {}).get("conditions")
            raise AssertionError(f"{waited.stderr}conditions: {ready}\n{stack.describe()}")
        pods = stack.items("pods")
        assert pods and all(p["status"]["phase"] == "Running" for p in pods), stack.describe()
        clusters = stack.items("rayclusters", f"moeplane.io/deployment={stack.name}")
        assert len(clusters) == 2
        for rc in clusters:
            conds = {c["type"]: c["status"] for c in rc["status"]["conditions"]}
            assert conds[K.HEAD_POD_READY] == "True" and conds[K.RAY_CLUSTER_PROVISIONED] == "True", conds
        roles = {p["metadata"]["labels"].get("ray.io/node-type") for p in pods}
        assert roles == {"head", "worker", None}  # the Ray pods, and the frontend's


# ---- 2 ----------------------------------------------------------------------------------------------------
def test_2_the_frontend_answers_like_moeplane_up(stack: E2EStack, e2e_report: E2EReport) -> None:
    with run_step(e2e_report, "2 OpenAI API answers equal moeplane up's", stack) as step:
        want = stack.desired_groups()
        step.wait(
            lambda: sum(len(g) for g in stack.serving().values()) >= want and stack.frontend_endpoint(),
            360,
            f"{want} serving EP groups and a ready frontend",
        )
        endpoint = stack.frontend_endpoint()
        answers = greedy_answers(f"http://{endpoint}/v1", stack.served_model)
        reference = embedded_answers(
            stack.manifest_path, stack.served_model, stack.workdir / "moeplane-up.log"
        )
        e2e_report.answers_match_embedded = answers == reference
        assert answers == reference, {p: (a, r) for p, a, r in zip(PROMPTS, answers, reference, strict=True)}


# ---- 3 ----------------------------------------------------------------------------------------------------
def _decode_pool(stack: E2EStack) -> str:
    return f"{stack.name}-decode"


def test_3_scale_decode_up_and_down_under_load(stack: E2EStack, e2e_report: E2EReport) -> None:
    with run_step(e2e_report, "3 kubectl scale moepool decode 2 and back to 1 under load", stack) as step:
        require_serving(step)
        baseline = stack.desired_groups()
        load = step.steady_load()
        stack.kubectl("scale", f"moepool/{_decode_pool(stack)}", "--replicas=2", "-n", stack.namespace)
        step.wait(lambda: len(stack.serving().get("decode", ())) == 2, 300, "a second decode group serving")
        before = set(stack.serving()["decode"])
        stack.kubectl("scale", f"moepool/{_decode_pool(stack)}", "--replicas=1", "-n", stack.namespace)
        step.wait(
            lambda: len(stack.serving().get("decode", ())) == 1 and stack.provisioned_groups() == baseline,
            300,
            "back to one decode group",
        )
        _settle(step, baseline)
        removed = before - set(stack.serving()["decode"])
        step.exits.close()
        assert load.failed == 0, load.failures()
        # Exactly the removed group left the registry, once: the kept one never stopped serving.
        assert removed and step.sampler.drained == sorted(removed), (removed, step.sampler.drained)
        assert not step.sampler.died, f"groups died instead of draining: {step.sampler.died}"
        assert step.sampler.min_serving >= baseline, step.sampler.serving_counts()


def _settle(step: Step, desired: int, hold_s: float = 5.0) -> None:
    """Capacity back at `desired` and staying there for `hold_s` (a late failure shows up)."""
    stack = step.stack
    step.wait(
        lambda: sum(len(g) for g in stack.serving().values()) == desired, 240, f"{desired} serving groups"
    )
    time.sleep(hold_s)


# ---- 4 ----------------------------------------------------------------------------------------------------
def _rolled_out(stack: E2EStack) -> bool:
    pools = stack.items("moepools", f"moeplane.io/deployment={stack.name}")
    if not pools:
        return False
    for pool in pools:
        conds = {c["type"]: c["status"] for c in (pool.get("status") or {}).get("conditions") or ()}
        if conds.get("Ready") != "True" or conds.get("Progressing") != "False":
            return False
    clusters = stack.items("rayclusters", f"moeplane.io/deployment={stack.name}")
    return len(clusters) == len(pools)


def test_4_rollouts_under_load_keep_capacity(stack: E2EStack, e2e_report: E2EReport) -> None:
    with run_step(e2e_report, "4 rollout (image tag, then EP layout) under load", stack) as step:
        require_serving(step)
        desired = stack.desired_groups()
        load = step.steady_load()
        revisions = {
            rc["metadata"]["name"]
            for rc in stack.items("rayclusters", f"moeplane.io/deployment={stack.name}")
        }
        patch = {"spec": {"image": "ghcr.io/moeplane/moeplane-worker:0.1.1"}}
        stack.kubectl(
            "patch",
            f"moedeployment/{stack.name}",
            "-n",
            stack.namespace,
            "--type=merge",
            "-p",
            json.dumps(patch),
        )
        step.wait(
            lambda: (
                _rolled_out(stack)
                and not revisions
                & {
                    rc["metadata"]["name"]
                    for rc in stack.items("rayclusters", f"moeplane.io/deployment={stack.name}")
                }
            ),
            420,
            "the image rollout to complete",
        )
        _settle(step, desired)
        image_phase_max = step.sampler.max_provisioned
        layout = {"spec": {"decode": {"redundantExperts": 2}}}
        stack.kubectl(
            "patch",
            f"moedeployment/{stack.name}",
            "-n",
            stack.namespace,
            "--type=merge",
            "-p",
            json.dumps(layout),
        )
        step.wait(
            lambda: (
                _rolled_out(stack)
                and stack.get_json("moepool", _decode_pool(stack))["spec"]["layout"].get(
                    "redundantExperts", 2
                )
                == 2
            ),
            420,
            "the EP layout rollout to complete",
        )
        _settle(step, desired)
        step.exits.close()
        assert load.failed == 0, load.failures()
        assert step.sampler.min_serving >= desired, step.sampler.serving_counts()
        # One surge group per rolling pool: both pools roll on an image change, decode on a layout one.
        assert image_phase_max <= desired + 2 and step.sampler.max_provisioned <= desired + 2


# ---- 5 ----------------------------------------------------------------------------------------------------
def _condition(stack: E2EStack, kind: str) -> str:
    conds = stack.get_json("moedeployment", stack.name).get("status", {}).get("conditions") or []
    return next((c["status"] for c in conds if c["type"] == kind), "")


def test_5_killing_a_worker_pods_processes_degrades_then_recovers(
    stack: E2EStack, e2e_report: E2EReport
) -> None:
    with run_step(e2e_report, "5 kill a decode worker pod's processes", stack) as step:
        require_serving(step)
        desired = stack.desired_groups()
        worker = stack.items("pods", f"moeplane.io/role=decode,{K.RAY_NODE_TYPE_LABEL}=worker")[0]
        assert stack.runner.kill_pod_processes(stack.namespace, worker["metadata"]["name"]) > 0
        step.wait(lambda: _condition(stack, "Degraded") == "True", 120, "Degraded=True", fail_fast=False)
        step.wait(
            lambda: (
                _condition(stack, "Degraded") == "False"
                and _condition(stack, "Ready") == "True"
                and sum(len(g) for g in stack.serving().values()) == desired
            ),
            300,
            "Ready again, serving",
        )


# ---- 6 ----------------------------------------------------------------------------------------------------
def test_6_kubectl_delete_removes_every_process_and_object(stack: E2EStack, e2e_report: E2EReport) -> None:
    with run_step(e2e_report, "6 kubectl delete of the deployment", stack) as step:
        deployed = stack.items("pods")
        uids = [p["metadata"]["uid"] for p in deployed]
        assert uids, "nothing was deployed"
        before = len(stack.runner.terminations)
        stack.kubectl(
            "delete",
            f"moedeployment/{stack.name}",
            "-n",
            stack.namespace,
            "--wait=true",
            "--timeout=180s",
            timeout_s=200,
        )
        selector = f"{MANAGED},moeplane.io/deployment={stack.name}"
        kinds = "moepools,rayclusters,configmaps,services,deployments,secrets"
        step.wait(
            lambda: (
                "No resources found"
                in stack.kubectl("get", kinds, "-l", selector, "-n", stack.namespace, check=False).stderr
            ),
            120,
            "no object left",
            fail_fast=False,
        )
        step.wait(lambda: not stack.items("pods"), 120, "no pod left", fail_fast=False)
        step.wait(
            lambda: not any(stack.runner.processes(uid) for uid in uids),
            120,
            "no process left",
            fail_fast=False,
        )
        client = redis.Redis.from_url(stack.redis_url)
        try:
            assert list(client.scan_iter(match=stack.keys.pattern())) == []
        finally:
            client.close()
        names = {p["metadata"]["name"] for p in deployed}
        step.entry.notes = [
            f"{t.pod}/{t.container} stopped in {t.seconds:.1f}s"
            + (f": SIGTERM ignored, killed at the end of the {t.grace_s:g}s grace period" if t.killed else "")
            for t in stack.runner.terminations[before:]
            if t.pod in names
        ]
        from tests.operator.harness import check_rbac

        check_rbac(stack.cluster, set())  # every call the operator made is in moeplane.operator.rbac.RULES


# ---- 7 ----------------------------------------------------------------------------------------------------
def test_7_helm_uninstall_leaves_nothing_behind(stack: E2EStack, e2e_report: E2EReport) -> None:
    from tests.k8s_e2e.helm import helm_uninstall, install_release_accounts, pre_delete_hooks

    with run_step(e2e_report, "7 helm uninstall with the pre-delete hook", stack) as step:
        hooks = pre_delete_hooks(stack.redis_url)
        assert hooks, "the chart renders no pre-delete hook"
        install_release_accounts(stack)
        stack.cluster.kubectl("apply", "-f", "-", input=json.dumps(stack.manifest))
        step.wait(lambda: _condition(stack, "Ready") == "True", 420, "the deployment to be Ready again")
        uids = [p["metadata"]["uid"] for p in stack.items("pods")]
        helm_uninstall(stack, hooks)
        assert stack.kubectl("get", "moedeployments", "-A", check=False).stderr.startswith(
            "No resources found"
        )
        step.wait(lambda: not stack.items("pods"), 120, "no pod left", fail_fast=False)
        step.wait(
            lambda: not any(stack.runner.processes(uid) for uid in uids),
            120,
            "no process left",
            fail_fast=False,
        )
