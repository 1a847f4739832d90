"""End to end with the real `kubectl` and the real `moeplane operator` process (issue steps 1-7).

The emulated API server runs in this process; the operator runs as `moeplane operator` in a
subprocess with its own kubeconfig (user `operator`); the KubeRay driver marks RayClusters ready.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from pathlib import Path

import kmock
import pytest
import yaml

from tests.kube.cluster import EmulatedCluster
from tests.kube.kuberay import KubeRayDriver
from tests.kube.operator_proc import operator_process
from tests.operator.harness import check_rbac

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MANAGED = "app.kubernetes.io/managed-by=moeplane-operator"


def jsonpath(cluster: EmulatedCluster, *args: str) -> str:
    return cluster.kubectl("get", *args).stdout.strip()


def children(cluster: EmulatedCluster, deployment: str) -> dict[str, list[str]]:
    selector = f"{MANAGED},moeplane.io/deployment={deployment}"
    out = cluster.kubectl(
        "get", "moepools,rayclusters,configmaps,services,deployments", "-l", selector, "-o", "json"
    ).stdout
    found: dict[str, list[str]] = {}
    for item in json.loads(out)["items"]:
        found.setdefault(item["kind"], []).append(item["metadata"]["name"])
    return {kind: sorted(names) for kind, names in found.items()}


def test_kubectl_end_to_end(
    kube_cluster: EmulatedCluster,
    kuberay: KubeRayDriver,
    tmp_path: Path,
    operator_api_calls: set[tuple[str, str, str]],
) -> None:
    cluster = kube_cluster
    k = cluster.kubectl
    log = tmp_path / "operator.log"

    # 1. CRDs and the DeepSeek-R1 deployment, with kubectl validating against /openapi/v3.
    assert "moedeployments.moeplane.io created" in k("apply", "-f", str(ROOT / "crds")).stdout
    with operator_process(cluster, log) as operator:
        proc, liveness = operator.proc, operator.liveness
        k("apply", "-f", str(ROOT / "examples" / "deepseek-r1.yaml"))

        # 2. The children, with DeepSeek's layout: EP32 over 4 nodes, EP144 over 18.
        cluster.wait_for(
            lambda: len(children(cluster, "deepseek-r1").get("RayCluster", [])) == 2,
            what="two RayClusters",
            interval_s=0.3,
        )
        hosts = jsonpath(
            cluster,
            "moepools",
            "-o",
            r"jsonpath={range .items[*]}{.spec.role}={.spec.layout.nodesPerGroup} {end}",
        )
        assert set(hosts.split()) == {"prefill=4", "decode=18"}
        groups = json.loads(k("get", "rayclusters", "-o", "json").stdout)["items"]
        assert sorted(g["spec"]["workerGroupSpecs"][0]["numOfHosts"] for g in groups) == [4, 18]
        found = children(cluster, "deepseek-r1")
        assert len(found["MoEPool"]) == 2 and len(found["ConfigMap"]) == 1 and len(found["Service"]) == 3
        assert found["Deployment"] == ["deepseek-r1-frontend"]

        # 3. Ready once KubeRay (the driver) reports the RayClusters ready.
        kuberay.mark_all_ready()
        k("wait", "--for=condition=Ready", "moed/deepseek-r1", "--timeout=120s")
        table = k("get", "moed", "deepseek-r1").stdout.splitlines()
        assert table[0].split()[-2:] == ["READY", "AGE"] and table[1].split()[-2] == "True"

        # 4. kubectl scale goes through the pool's scale subresource to the RayCluster.
        assert "scaled" in k("scale", "moepool/deepseek-r1-decode", "--replicas=2").stdout
        cluster.wait_for(
            lambda: (
                "2"
                in jsonpath(
                    cluster,
                    "rayclusters",
                    "-l",
                    "moeplane.io/role=decode",
                    "-o",
                    "jsonpath={.items[0].spec.workerGroupSpecs[0].replicas}",
                )
            ),
            what="the decode RayCluster at 2 groups",
            interval_s=0.3,
        )

        # 5. Bad manifests: refused by CEL, or accepted and marked Invalid with the exact message.
        bad = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
        bad["metadata"]["name"] = "refused"
        bad["spec"]["decode"].update(minReplicas=3, replicas=1)
        refused = k("apply", "-f", "-", input=json.dumps(bad), check=False)
        assert (
            refused.returncode != 0
            and "minReplicas" in refused.stderr
            and "exceeds replicas" in refused.stderr
        )
        invalid = yaml.safe_load((ROOT / "examples" / "deepseek-r1.yaml").read_text())
        invalid["metadata"]["name"] = "too-small"
        invalid["spec"]["decode"].update(expertParallel=8, redundantExperts=0)
        k("apply", "-f", "-", input=json.dumps(invalid))
        k("wait", "--for=condition=Invalid", "moed/too-small", "--timeout=120s")
        message = jsonpath(
            cluster, "moed", "too-small", "-o", 'jsonpath={.status.conditions[?(@.type=="Invalid")].message}'
        )
        assert "does not fit in GPU memory" in message
        events = k("get", "events", "--field-selector", "reason=InvalidSpec", "-o", "json").stdout
        assert [e["message"] for e in json.loads(events)["items"]] == [message]
        assert children(cluster, "too-small") == {}

        # 6. kubectl delete removes everything (owner references; the finalizer is released).
        k("delete", "moed", "deepseek-r1", "too-small", "--wait=true", "--timeout=120s")
        assert (
            "No resources found"
            in k("get", "moepools,rayclusters,configmaps,services,deployments", "-l", MANAGED).stderr
        )
        with urllib.request.urlopen(liveness, timeout=5) as r:
            assert r.status == 200 and "reconciles" in json.loads(r.read())

        # 7. A restart in the middle of a reconcile: the first pool's creation stalls until the
        #    operator has been killed (an event, not a duration: however slow the machine, the
        #    kill lands while the create is held), with the engine ConfigMap made and no pool yet;
        #    a new one finishes the job.
        stalled: list[bool] = []
        killed = threading.Event()

        async def stall() -> None:  # answers nothing itself: the request then goes to the store
            if not stalled:
                stalled.append(True)
                await asyncio.to_thread(killed.wait, 120)  # bounded: a failed test cannot hang here

        cluster.emulator["post", kmock.resource("moeplane.io", "v1alpha1", "moepools")] << stall
        k("apply", "-f", str(ROOT / "examples" / "tiny-cpu.yaml"))
        cluster.wait_for(
            lambda: cluster.find("v1", "ConfigMap", "tiny-engine") is not None,
            what="the reconcile to start",
            interval_s=0.05,
        )
        proc.kill()
        proc.wait()
        assert cluster.find("moeplane.io/v1alpha1", "MoEPool", "tiny-decode") is None
        killed.set()
    with operator_process(cluster, log):
        cluster.wait_for(
            lambda: len(children(cluster, "tiny").get("RayCluster", [])) == 2,
            what="the reconcile to converge after the restart",
            interval_s=0.3,
        )
        kuberay.mark_all_ready()
        k("wait", "--for=condition=Ready", "moed/tiny", "--timeout=120s")
        found = children(cluster, "tiny")
        assert {kind: len(names) for kind, names in found.items()} == {
            "MoEPool": 2,
            "RayCluster": 2,
            "ConfigMap": 1,
            "Service": 3,
            "Deployment": 1,
        }
    check_rbac(cluster, operator_api_calls)
