"""`spec.eplb.loadFile`: a path or `configmap://NAME/KEY`, accepted by every check when well
formed (models, CEL, both schemas), refused by the models with a message naming the field."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from moeplane.api.configmapref import ConfigMapKeyRef
from moeplane.api.enums import Role
from moeplane.api.errors import SpecInvalid
from moeplane.api.layout import resolve_layout
from moeplane.api.spec import EplbSpec, MoEDeployment, MoEPoolSpec, parse_deployment

from moeplane.codegen.crds import Dialect, deployment_crd, resource_schema
from tests.api.celeval import evaluate_rules

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
R1 = yaml.safe_load((EXAMPLES / "deepseek-r1.yaml").read_text())
CRD_SCHEMA = deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
STRICT_SCHEMA = resource_schema(MoEDeployment, Dialect.JSON_SCHEMA)


def static(load_file: str) -> dict:
    out = copy.deepcopy(R1)
    out["spec"]["eplb"] = {"mode": "static", "loadFile": load_file}
    return out


@pytest.mark.parametrize(
    ("load_file", "ref"),
    [
        ("configmap://r1-load/decode-load.json", ConfigMapKeyRef("r1-load", "decode-load.json")),
        ("configmap://loads.team-a/R1_prefill.v2.PT", ConfigMapKeyRef("loads.team-a", "R1_prefill.v2.PT")),
        ("/models/deepseek-r1/expert-load.pt", None),
        ("loads/r1.json", None),
    ],
)
def test_paths_and_configmap_keys_pass_every_check(load_file: str, ref: ConfigMapKeyRef | None) -> None:
    manifest = static(load_file)
    dep = parse_deployment(manifest)
    assert dep.spec.eplb.load_file == load_file and dep.spec.eplb.load_configmap == ref
    assert ref is None or ref.uri == load_file
    assert evaluate_rules(CRD_SCHEMA, manifest) == []
    jsonschema.Draft4Validator(CRD_SCHEMA).validate(manifest)
    jsonschema.Draft7Validator(STRICT_SCHEMA).validate(manifest)


@pytest.mark.parametrize(
    ("load_file", "message"),
    [
        ("configmap://r1-load/a/b.json", "ConfigMap key 'a/b.json' must be letters, digits"),
        ("configmap://r1-load/my load.json", "ConfigMap key 'my load.json' must be letters"),
        ("configmap://r1-load/..", "(not '.' or '..'"),
        ("configmap://-r1-load/l.json", "ConfigMap name '-r1-load' must be a DNS-1123 subdomain"),
        ("configmap:///l.json", "ConfigMap name '' must be a DNS-1123 subdomain"),
        (f"configmap://{'a' * 254}/l.json", "at most 253 characters"),
        ("configmap://r1-load/.json", "must end in .json or .pt"),
        ("/data/r1-load", "must end in .json or .pt"),
    ],
)
def test_malformed_load_files_name_the_field(load_file: str, message: str) -> None:
    with pytest.raises(SpecInvalid) as err:
        parse_deployment(static(load_file))
    [only] = err.value.messages
    assert only.startswith(f"spec.eplb.loadFile: {load_file!r}") and message in only


def test_the_pool_spec_checks_its_load_file_alike() -> None:
    group = resolve_layout(parse_deployment(R1).spec).pool(Role.DECODE).group
    base = {"role": "decode", "deploymentName": "deepseek-r1", "replicas": 1, "layout": group.to_wire()}
    pool = MoEPoolSpec.model_validate({**base, "eplbLoadFile": "configmap://l/x.json"})
    assert pool.eplb_load_file == "configmap://l/x.json"
    with pytest.raises(ValueError, match=r"'configmap://l/x\.yaml' must end in \.json or \.pt"):
        MoEPoolSpec.model_validate({**base, "eplbLoadFile": "configmap://l/x.yaml"})
    assert MoEPoolSpec.model_validate(base).eplb_load_file is None
    assert EplbSpec().load_configmap is None
