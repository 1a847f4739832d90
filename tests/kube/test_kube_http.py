"""The emulated API server over HTTPS, driven by the real kubectl and a plain aiohttp client."""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp
import kmock
import pytest

from tests.kube.cluster import EmulatedCluster, kubectl_binary
from tests.kube.kuberay import KubeRayDriver

pytestmark = pytest.mark.integration

FOO_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: foos.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: foos, kind: Foo, singular: foo, shortNames: [fo]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - {rule: "self.replicas <= self.max", message: "replicas must not exceed max"}
            properties:
              replicas: {type: integer, minimum: 0}
              max: {type: integer, default: 4}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def foo(name: str, **spec: Any) -> str:
    return json.dumps(
        {"apiVersion": "example.com/v1", "kind": "Foo", "metadata": {"name": name}, "spec": spec}
    )


def test_kubectl_against_the_emulator(kube_cluster: EmulatedCluster) -> None:
    assert "site-packages" in str(kubectl_binary()) or ".venv" in str(kubectl_binary())
    k = kube_cluster.kubectl
    assert "created" in k("apply", "-f", "-", input=FOO_CRD).stdout
    assert "created" in k("apply", "-f", "-", input=foo("f1", replicas=2)).stdout
    assert "unchanged" in k("apply", "-f", "-", input=foo("f1", replicas=2)).stdout

    table = k("get", "foos").stdout.splitlines()
    assert table[0].split() == ["NAME", "REPLICAS", "AGE"] and table[1].split()[:2] == ["f1", "2"]

    # kubectl validates on the server (fieldValidation=Strict, found in /openapi/v3): schema and CEL.
    bad = k("apply", "-f", "-", input=foo("f2", replicas=9), check=False)
    assert bad.returncode == 1 and 'spec: Invalid value: "object": replicas must not exceed max' in bad.stderr
    unknown = k("apply", "-f", "-", input=foo("f3", replicas=1, bogus=True), check=False)
    assert unknown.returncode == 1 and 'unknown field "spec.bogus"' in unknown.stderr

    assert "scaled" in k("scale", "foo/f1", "--replicas=3").stdout
    assert k("get", "fo", "f1", "-o", "jsonpath={.spec.replicas} {.metadata.generation}").stdout == "3 2"
    k(
        "patch",
        "foo",
        "f1",
        "--type",
        "json",
        "-p",
        '[{"op": "replace", "path": "/spec/replicas", "value": 1}]',
    )
    assert k("get", "foo", "f1", "-o", "jsonpath={.spec.replicas}").stdout == "1"

    assert "deleted" in k("delete", "foo", "f1", "--wait=true", "--timeout=10s").stdout
    assert "No resources found" in k("get", "foos").stderr
    verbs = {(c.verb, c.resource) for c in kube_cluster.calls("admin")}
    assert {("create", "foos"), ("patch", "foos"), ("delete", "foos"), ("list", "foos")} <= verbs


async def test_watch_stream_conflicts_and_auth(kube_cluster: EmulatedCluster) -> None:
    context = ssl.create_default_context(cadata=kube_cluster.certificate.ca_pem.decode())
    headers = {"Authorization": f"Bearer {kube_cluster.tokens['admin']}"}
    base = kube_cluster.url + "/api/v1/namespaces/default/configmaps"
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=context)) as http:
        async with http.get(
            kube_cluster.url + "/api/v1/namespaces", headers={"Authorization": "Bearer nope"}
        ) as r:
            assert r.status == 401
        async with http.post(base, json={"metadata": {"name": "c"}, "data": {"a": "1"}}) as r:
            created = await r.json()
            assert r.status == 201
        rv = created["metadata"]["resourceVersion"]
        async with http.put(base + "/c", json={**created, "data": {"a": "2"}}) as r:
            assert r.status == 200
        async with http.put(base + "/c", json={**created, "data": {"a": "3"}}) as r:
            assert r.status == 409 and (await r.json())["reason"] == "Conflict"
        async with http.get(
            base, params={"watch": "true", "resourceVersion": rv, "timeoutSeconds": "1"}
        ) as r:
            assert r.headers["Content-Type"] == "application/json"
            events = [json.loads(line) for line in (await r.read()).splitlines()]
        assert [(e["type"], e["object"]["data"]["a"]) for e in events] == [("MODIFIED", "2")]
        async with http.get(
            base, params={"watch": "true", "resourceVersion": "1", "timeoutSeconds": "1"}
        ) as r:
            lines = (await r.read()).splitlines()
        # History from rv 1 is still held here, so it replays instead of failing.
        assert lines and json.loads(lines[-1])["type"] == "MODIFIED"


def test_request_log_is_bounded_and_reactions_still_apply(tmp_path: Any) -> None:
    with EmulatedCluster(users=("admin",), workdir=tmp_path, log_size=3) as cluster:
        # A test can still intercept with kmock's DSL: fail exactly one LIST of configmaps.
        cluster.emulator["list", kmock.resource("", "v1", "configmaps")][:1] << 500
        first = cluster.kubectl("get", "configmaps", check=False)
        assert first.returncode != 0
        for _ in range(3):
            cluster.kubectl("get", "configmaps", "-o", "name")
        assert len(cluster.emulator._requests) <= 3 and len(cluster.calls()) <= 3
        assert cluster.request_count("admin") >= 4  # counted beyond what the log keeps


def test_kuberay_driver_sets_status(kube_cluster: EmulatedCluster, kuberay: KubeRayDriver) -> None:
    rc = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {"workerGroupSpecs": [{"groupName": "g", "replicas": 2, "numOfHosts": 3}]},
    }
    kube_cluster.apply_object(rc)
    kuberay.set_ready("r", ready_groups=1)
    status = kube_cluster.get("ray.io/v1", "RayCluster", "r")["status"]
    assert status["readyWorkerReplicas"] == 3 and status["desiredWorkerReplicas"] == 6
    assert kuberay.mark_all_ready() == 1 and kuberay.mark_all_ready() == 0  # unchanged: no write
    assert kube_cluster.get("ray.io/v1", "RayCluster", "r")["status"]["state"] == "ready"
