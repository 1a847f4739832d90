# ruff: noqa: E501
"""The pod-template, storage and fabric fields: a manifest using all of them is valid for the models,
the CRD's schema and `moeplane validate`; each field's bad values are refused naming the field."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from moeplane.api.errors import SpecInvalid
from moeplane.api.podchecks import QuantityError, parse_quantity
from moeplane.api.podcontract import mooncake_settings
from moeplane.api.spec import MoEDeployment, parse_deployment

from moeplane.codegen.crds import Dialect, deployment_crd, resource_schema
from tests.api.celeval import evaluate_rules

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CRD_SCHEMA = deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
STRICT_SCHEMA = resource_schema(MoEDeployment, Dialect.JSON_SCHEMA)

FULL = Path(__file__).resolve().parent / "full_manifest.yaml"


def full() -> dict[str, Any]:
    return yaml.safe_load(FULL.read_text())


def set_path(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out["spec"]
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if leaf.isdigit():
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return out


def test_a_manifest_using_every_field_is_valid_everywhere() -> None:
    doc = full()
    deployment = parse_deployment(doc)
    jsonschema.Draft4Validator(CRD_SCHEMA).validate(doc)
    jsonschema.Draft7Validator(STRICT_SCHEMA).validate(doc)
    assert evaluate_rules(CRD_SCHEMA, doc) == []
    assert deployment.spec.decode.pod is not None and deployment.spec.decode.pod.queue == "llm"
    # The wire form round-trips: what the operator copies into MoEPools is what was written.
    assert deployment.spec.to_wire()["decode"]["pod"] == doc["spec"]["decode"]["pod"]
    # Mooncake's devices default to the fabric's HCAs.
    mooncake = mooncake_settings(deployment.spec)
    assert mooncake is not None and mooncake.device_name == "mlx5_0,mlx5_1"


def test_unknown_pod_fields_are_refused_by_the_schema_and_the_models() -> None:
    doc = set_path(full(), "decode.pod.securityContext.runAsUsr", 1)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(STRICT_SCHEMA).validate(doc)
    with pytest.raises(SpecInvalid, match=r"spec\.decode\.pod\.securityContext\.runAsUsr"):
        parse_deployment(doc)


BAD = [
    ("decode.pod.env", [{"name": "MOEPLANE_ROLE", "value": "x"}], "spec.decode.pod.env[0].name", "set by the operator"),
    ("decode.pod.env", [{"name": "HF_HOME", "value": "/x"}], "spec.decode.pod.env[0].name", "set by the operator"),
    ("decode.pod.env", [{"name": "NCCL_IB_HCA", "value": "x"}], "spec.decode.pod.env[0].name", "set by the operator"),
    ("decode.pod.env", [{"name": "RAY_ADDRESS", "value": "x"}], "spec.decode.pod.env[0].name", "KubeRay"),
    ("decode.pod.env", [{"name": "1BAD", "value": "x"}], "spec.decode.pod.env[0].name", "not an environment"),
    ("frontend.pod.env", [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}], "spec.frontend.pod.env[1].name", "twice"),
    ("decode.pod.env", [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {}}}], "spec.decode.pod.env[0]", "not both"),
    ("decode.pod.env", [{"name": "A", "valueFrom": {"nope": {}}}], "spec.decode.pod.env[0].valueFrom", "exactly one"),
    ("decode.pod.volumes", [{"name": "dshm", "emptyDir": {}}], "spec.decode.pod.volumes[0].name", "operator's"),
    ("decode.pod.volumes", [{"name": "pvc-x", "emptyDir": {}}], "spec.decode.pod.volumes[0].name", "operator's"),
    ("decode.pod.volumes", [{"name": "s", "emptyDir": {}, "hostPath": {}}], "spec.decode.pod.volumes[0]", "exactly one"),
    ("decode.pod.volumes", [{"name": "s"}], "spec.decode.pod.volumes[0]", "exactly one"),
    ("decode.pod.volumes", [{"name": "Bad_Name", "emptyDir": {}}], "spec.decode.pod.volumes[0].name", "DNS-1123"),
    ("decode.pod.volumeMounts", [{"name": "nope", "mountPath": "/x"}], "spec.decode.pod.volumeMounts[0].name", "not one of"),
    ("decode.pod.volumeMounts", [{"name": "scratch", "mountPath": "/dev/shm"}], "spec.decode.pod.volumeMounts[0].mountPath", "under /dev/shm"),
    ("decode.pod.volumeMounts", [{"name": "scratch", "mountPath": "/mnt/moeplane/x"}], "spec.decode.pod.volumeMounts[0].mountPath", "under /mnt/moeplane"),
    ("decode.pod.volumeMounts", [{"name": "scratch", "mountPath": "rel"}], "spec.decode.pod.volumeMounts[0].mountPath", "absolute"),
    ("decode.pod.labels", {"moeplane.io/pool": "x"}, "spec.decode.pod.labels.moeplane.io/pool", "set by the operator"),
    ("decode.pod.labels", {"ray.io/node-type": "x"}, "spec.decode.pod.labels.ray.io/node-type", "set by the operator"),
    ("decode.pod.labels", {"team": "not a value!"}, "spec.decode.pod.labels.team", "not a label value"),
    ("decode.pod.annotations", {"k8s.v1.cni.cncf.io/networks": "x"}, "spec.decode.pod.annotations.k8s.v1.cni.cncf.io/networks", "set by the operator"),
    ("decode.pod.imagePullSecrets", [{"name": "Not_A_Name"}], "spec.decode.pod.imagePullSecrets[0].name", "not a Secret name"),
    ("decode.pod.priorityClassName", "UPPER", "spec.decode.pod.priorityClassName", "not a PriorityClass"),
    ("decode.pod.queue", "Bad Queue", "spec.decode.pod.queue", "not a queue name"),
    ("decode.pod.shmSize", "lots", "spec.decode.pod.shmSize", "not a Kubernetes quantity"),
    ("decode.resources", {"requests": {"memory": "64Gi"}}, "spec.decode.resources.requests.memory", "below the worker's /dev/shm (128Gi)"),
    ("decode.resources", {"limits": {"memory": "128Gi"}}, "spec.decode.resources.limits.memory", "no room"),
    ("decode.resources", {"requests": {"cpu": "two"}}, "spec.decode.resources.requests.cpu", "quantity"),
    ("decode.resources", {"request": {"cpu": "2"}}, "spec.decode.resources.request", "not a ResourceRequirements"),
    ("decode.topologyKey", "not a key!", "spec.decode.topologyKey", "not a node label key"),
    ("model.weights.uri", "s3://bucket/model", "spec.model.weights.uri", "s3:// is not supported"),
    ("model.weights.uri", "pvc://Bad_Claim/x", "spec.model.weights.uri", "not a valid PersistentVolumeClaim"),
    ("model.tokenizer", "deepseek-ai/DeepSeek-R1", "spec.model.tokenizer", "absolute path"),
    ("model.hfCache", {"claimName": "Bad_Claim"}, "spec.model.hfCache.claimName", "PersistentVolumeClaim"),
    ("model.hfCache", {"claimName": "c", "sizeLimit": "1Ti"}, "spec.model.hfCache.sizeLimit", "emptyDir cache only"),
    ("hardware.rdma.resourceName", "hca", "spec.hardware.rdma.resourceName", "extended resource"),
    ("hardware.rdma.hcas", ["mlx5_0,mlx5_1"], "spec.hardware.rdma.hcas[0]", "one RDMA device"),
    ("hardware.rdma.networks", ["a/b/c"], "spec.hardware.rdma.networks[0]", "NetworkAttachmentDefinition"),
    ("kvTransfer", {"backend": "grpc", "mooncake": {"protocol": "tcp"}}, "spec.kvTransfer.mooncake", "backend is grpc"),
]  # fmt: skip


@pytest.mark.parametrize("dotted,value,path,text", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_values_are_refused_naming_the_field(dotted: str, value: Any, path: str, text: str) -> None:
    doc = set_path(full(), dotted, value)
    with pytest.raises(SpecInvalid) as err:
        parse_deployment(doc)
    found = [p for p in err.value.problems if p.path == path]
    assert found and text in found[0].message, [str(p) for p in err.value.problems]


def test_mooncake_rdma_needs_the_fabric() -> None:
    doc = full()
    del doc["spec"]["hardware"]["rdma"]
    with pytest.raises(
        SpecInvalid, match=r"spec\.kvTransfer\.mooncake\.protocol: rdma needs spec\.hardware\.rdma"
    ):
        parse_deployment(doc)
    doc = full()
    del doc["spec"]["hardware"]["rdma"]["hcas"]
    with pytest.raises(SpecInvalid, match=r"spec\.kvTransfer\.mooncake\.deviceName"):
        parse_deployment(doc)
    doc["spec"]["kvTransfer"]["mooncake"]["deviceName"] = "mlx5_2"
    spec = parse_deployment(doc).spec
    assert mooncake_settings(spec) is not None and mooncake_settings(spec).device_name == "mlx5_2"  # type: ignore[union-attr]


def test_rdma_on_cpu_is_refused() -> None:
    tiny = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    tiny["spec"]["hardware"]["rdma"] = {"resourceName": "rdma/hca"}
    with pytest.raises(SpecInvalid, match=r"spec\.hardware\.rdma: the cpu preset requests no devices"):
        parse_deployment(tiny)


@pytest.mark.parametrize(
    "text,value",
    [
        ("64Gi", 64 * 2**30),
        ("500m", Decimal("0.5")),
        ("2", 2),
        (4, 4),
        ("1e3", 1000),
        ("1.5G", 1_500_000_000),
    ],
)
def test_quantities(text: object, value: object) -> None:
    assert parse_quantity(text) == Decimal(str(value))


@pytest.mark.parametrize("text", ["", "Gi", "1 Gi", "1GB", "-", True])
def test_bad_quantities(text: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)
