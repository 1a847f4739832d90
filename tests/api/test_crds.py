"""The generated CRDs: committed files match the models, schemas are structural and valid
apiextensions/v1, and the subresources, printer columns and names are what the design fixes."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from moeplane.api.spec import MoEDeployment, MoEPool, SlaSpec, parse_deployment

from moeplane.codegen.crds import (
    Dialect,
    deployment_crd,
    pool_crd,
    rendered_files,
    resource_schema,
    structural_problems,
    values_json_schema,
)
from tests.api.celeval import _compile, apply_defaults, evaluate_rules

pytestmark = pytest.mark.unit

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def _schema(crd: dict) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _rules(schema: dict) -> list[dict]:
    out = list(schema.get("x-kubernetes-validations", []))
    for sub in (schema.get("properties") or {}).values():
        out += _rules(sub)
    if isinstance(schema.get("items"), dict):
        out += _rules(schema["items"])
    return out


@pytest.mark.parametrize("name", sorted(rendered_files()))
def test_committed_crds_match_the_models(name: str) -> None:
    committed = (CRD_DIR / name).read_text()
    assert committed == rendered_files()[name], f"crds/{name} is stale: run `make crds`"


@pytest.mark.parametrize("build", [deployment_crd, pool_crd], ids=["moedeployment", "moepool"])
def test_crd_is_valid_apiextensions_v1_and_structural(build) -> None:
    crd = build()
    kubernetes_validate.validate(crd, kubernetes_validate.latest_version(), strict=True)
    assert structural_problems(_schema(crd)) == []
    assert _schema(crd)["properties"]["metadata"] == {"type": "object"}


def test_structural_check_catches_what_it_should() -> None:
    bad = {"type": "object", "properties": {
        "a": {"properties": {}},
        "b": {"$ref": "#/x", "type": "object"},
        "c": {"type": "string", "x-kubernetes-preserve-unknown-fields": True},
        "d": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
    }}
    assert structural_problems(bad) == [
        ".a: has no type",
        ".b: $ref is not allowed",
        ".c: x-kubernetes-preserve-unknown-fields on a string",
        ".d: properties and additionalProperties together",
    ]


def test_moedeployment_names_status_and_columns() -> None:
    crd = deployment_crd()
    assert crd["metadata"]["name"] == "moedeployments.moeplane.io"
    assert crd["spec"]["names"]["shortNames"] == ["moed"]
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Decode-EP"] == ".spec.decode.expertParallel"


def test_moepool_scale_subresource_points_at_replicas_and_selector() -> None:
    version = pool_crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    props = version["schema"]["openAPIV3Schema"]["properties"]
    assert props["spec"]["properties"]["replicas"]["type"] == "integer"
    assert props["status"]["properties"]["replicas"]["type"] == "integer"
    assert props["status"]["properties"]["selector"]["type"] == "string"


def test_descriptions_and_defaults_come_from_the_models() -> None:
    spec = _schema(deployment_crd())["properties"]["spec"]["properties"]
    chunk = spec["kvTransfer"]["properties"]["chunkBytes"]
    assert chunk["minimum"] == 256 * 1024 and chunk["maximum"] == 1024 * 1024
    assert chunk["default"] == 512 * 1024 and "256 KiB" in chunk["description"]
    assert spec["eplb"]["default"] == {}
    assert spec["eplb"]["properties"]["mode"]["enum"] == ["off", "static", "online"]
    assert spec["sla"]["properties"]["ttftMs"] == {
        "description": SlaSpec.model_fields["ttft_ms"].description,
        "type": "number", "minimum": 0, "exclusiveMinimum": True,
    }
    assert spec["prefill"]["properties"]["tolerations"]["items"] == {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
    }


@pytest.mark.parametrize("build", [deployment_crd, pool_crd], ids=["moedeployment", "moepool"])
def test_every_cel_rule_compiles_with_a_real_cel_runtime(build) -> None:
    rules = _rules(_schema(build()))
    assert rules or build is pool_crd
    for rule in rules:
        _compile(rule["rule"])
        if "messageExpression" in rule:
            _compile(rule["messageExpression"])


def test_moepool_object_round_trips_through_both_schemas() -> None:
    from moeplane.api.layout import resolve_layout
    from moeplane.api.spec import MoEPoolSpec, Role, parse_deployment, parse_pool

    r1 = parse_deployment(yaml.safe_load((CRD_DIR.parent / "examples" / "deepseek-r1.yaml").read_text()))
    layout = resolve_layout(r1.spec)
    pool = MoEPool(
        metadata={"name": "deepseek-r1-decode"},
        spec=MoEPoolSpec(
            role=Role.DECODE, deployment_name="deepseek-r1", replicas=1, layout=layout.decode.group
        ),
        status={"replicas": 1, "readyGroups": 0, "selector": "moeplane.io/pool=deepseek-r1-decode"},
    )
    wire = pool.to_wire()
    jsonschema.Draft4Validator(_schema(pool_crd())).validate(wire)
    jsonschema.Draft7Validator(resource_schema(MoEPool, Dialect.JSON_SCHEMA)).validate(wire)
    assert parse_pool(wire) == pool
    assert wire["spec"]["layout"]["nodesPerGroup"] == 18


def test_values_json_schema_is_a_valid_draft7_document() -> None:
    schema = values_json_schema(MoEDeployment, title="MoEDeployment")
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False


def _defaulted_nodes(schema: dict, path: str = "") -> list[tuple[str, dict]]:
    out = [(path, schema)] if "default" in schema and schema.get("type") == "object" else []
    for key, sub in (schema.get("properties") or {}).items():
        out += _defaulted_nodes(sub, f"{path}.{key}")
    return out


@pytest.mark.parametrize("build", [deployment_crd, pool_crd], ids=["moedeployment", "moepool"])
def test_object_defaults_pass_their_own_rules(build) -> None:
    """The API server refuses a CRD whose defaults break its schema or CEL rules."""
    nodes = _defaulted_nodes(_schema(build()))
    expected = [".spec.eplb", ".spec.kvTransfer", ".spec.serving", ".spec.planner", ".spec.frontend"]
    rollout = [".spec.rollout"]  # both kinds: a pool carries its deployment's surge
    assert [p for p, _ in nodes] == (expected + rollout if build is deployment_crd else rollout)
    for path, node in nodes:
        value = apply_defaults(node, node["default"])
        assert value, path
        jsonschema.Draft4Validator(node).validate(value)
        assert evaluate_rules(node, value) == [], path


def test_defaulting_matches_the_models() -> None:
    manifest = yaml.safe_load((CRD_DIR.parent / "examples" / "qwen3-235b.yaml").read_text())
    defaulted = apply_defaults(_schema(deployment_crd()), manifest)
    assert defaulted["spec"] == parse_deployment(manifest).to_wire()["spec"]
