"""Bad values are refused by Helm with the schema's message (naming the key and the constraint),
the Python models refuse the same values, and cross-field mistakes fail with a clear message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from pydantic import ValidationError

from moeplane.codegen.chart import ChartValues
from tests.charts.chartkit import CHART_DIR, NAMESPACE, ROOT, chart, one, render, values_file, values_files
from tests.example_manifests import example_manifest

pytestmark = pytest.mark.unit

# values -> fragments Helm's schema error must contain (the JSON pointer and the constraint).
BAD_VALUES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    (
        "unknown top-level key",
        {"replicaCount": 3},
        ("at ''", "additional properties 'replicaCount' not allowed"),
    ),
    (
        "typo in a nested key",
        {"redis": {"persistance": {"enabled": False}}},
        ("at '/redis'", "additional properties 'persistance' not allowed"),
    ),
    (
        "enum",
        {"image": {"pullPolicy": "Sometimes"}},
        ("at '/image/pullPolicy'", "'Always'", "'IfNotPresent'", "'Never'"),
    ),
    ("service type", {"planner": {"service": {"type": "ExternalName"}}}, ("at '/planner/service/type'",)),
    (
        "port range",
        {"operator": {"livenessPort": 70000}},
        ("at '/operator/livenessPort'", "maximum: got 70,000, want 65,535"),
    ),
    ("positive resync", {"operator": {"resyncSeconds": 0}}, ("at '/operator/resyncSeconds'", "0")),
    ("boolean", {"networkPolicy": {"enabled": "yes"}}, ("at '/networkPolicy/enabled'", "boolean")),
    ("list of names", {"operator": {"namespaces": "llm-prod"}}, ("at '/operator/namespaces'", "array")),
    ("empty repository", {"image": {"repository": ""}}, ("at '/image/repository'", "minLength")),
    (
        "MoEDeployment spec from the CRD's model",
        {
            "deployments": [
                {
                    "name": "bad",
                    "spec": {
                        "model": {"preset": "gpt-5", "weights": {"format": "random"}},
                        "hardware": {"gpu": "cpu"},
                        "prefill": {"expertParallel": 2},
                        "decode": {"expertParallel": 2},
                        "sla": {"ttftMs": 100, "itlMs": 10},
                    },
                }
            ]
        },
        ("at '/deployments/0/spec/model/preset'", "deepseek-r1"),
    ),
    (
        "MoEDeployment spec needs its SLA",
        {
            "deployments": [
                {
                    "name": "bad",
                    "spec": {
                        "model": {"preset": "tiny", "weights": {"format": "random"}},
                        "hardware": {"gpu": "cpu"},
                        "prefill": {"expertParallel": 2},
                        "decode": {"expertParallel": 2},
                    },
                }
            ]
        },
        ("at '/deployments/0/spec'", "missing property 'sla'"),
    ),
]


@pytest.mark.parametrize(
    ("values", "fragments"), [(v, f) for _, v, f in BAD_VALUES], ids=[name for name, _, _ in BAD_VALUES]
)
def test_bad_values_are_refused_with_the_schema_message(
    values: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    with pytest.raises(helm.HelmValuesError) as schema_error:
        chart().validate_schema(values)
    for fragment in fragments:
        assert fragment in str(schema_error.value), str(schema_error.value)
    # `helm install`/`template` refuse them the same way, before rendering anything.
    with pytest.raises(helm.HelmValuesError) as render_error:
        chart().render(values, name="moeplane", namespace=NAMESPACE)
    assert fragments[0] in str(render_error.value)
    # And so does lint.
    report = helm.lint(CHART_DIR, values)
    assert any(fragments[0] in e for e in report["errors"]), report["errors"]


@pytest.mark.parametrize(
    ("values", "fragments"), [(v, f) for _, v, f in BAD_VALUES], ids=[name for name, _, _ in BAD_VALUES]
)
def test_the_models_refuse_what_the_schema_refuses(
    values: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    # Strict, from JSON: no "yes" -> True coercion the schema would not allow either.
    merged = json.dumps(chart().merge_values(values))
    with pytest.raises(ValidationError):
        ChartValues.model_validate_json(merged, strict=True)


@pytest.mark.parametrize("name", values_files())
def test_good_values_pass_both(name: str) -> None:
    values = values_file(name)
    chart().validate_schema(values)
    ChartValues.model_validate_json(json.dumps(chart().merge_values(values)), strict=True)


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_every_example_fits_deployments_values(example: str, hf_checkpoint: Any) -> None:
    """The examples' specs pass the chart's schema (the CRD's model in JSON Schema form) and
    render into MoEDeployments the API accepts (local-checkpoint.yaml's placeholder replaced by a
    real checkpoint, as a user's)."""
    from moeplane.api.spec import parse_deployment

    doc = example_manifest(ROOT / "examples" / example, hf_checkpoint("deepseek-v3"))
    values = {"deployments": [{"name": doc["metadata"]["name"], "namespace": "models", "spec": doc["spec"]}]}
    chart().validate_schema(values)
    rendered = one(render(values), "MoEDeployment", doc["metadata"]["name"])
    assert rendered["metadata"]["namespace"] == "models"
    assert rendered["spec"] == doc["spec"]
    parse_deployment(rendered)  # structural and cross-field rules


CROSS_FIELD = [
    (
        {"redis": {"enabled": False}},
        "redis.enabled is false: set redis.external.url or redis.external.existingSecret",
    ),
    (
        {"redis": {"enabled": False, "external": {"url": "redis://r:6379", "existingSecret": "s"}}},
        "redis.external: set url or existingSecret, not both",
    ),
    ({"operator": {"namespaces": ["Prod_NS"]}}, 'operator.namespaces: "Prod_NS" is not a namespace name'),
]


@pytest.mark.parametrize(
    ("values", "message"), CROSS_FIELD, ids=["no-redis", "two-redis-urls", "bad-namespace"]
)
def test_cross_field_mistakes_fail_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    chart().validate_schema(values)  # each key alone is fine
    with pytest.raises(helm.HelmRenderError) as error:
        chart().render(values, name="moeplane", namespace=NAMESPACE)
    assert message in str(error.value)


def test_values_schema_is_what_helm_loads(tmp_path: Path) -> None:
    """A chart packaged and reloaded keeps its schema, so `helm install` of the archive checks it too."""
    archive = chart().save(tmp_path)
    with helm.Chart.load(archive) as packaged:
        assert packaged.schema == chart().schema
        with pytest.raises(helm.HelmValuesError):
            packaged.validate_schema({"replicaCount": 3})
