"""Schemas generated from the API models: Kubernetes CRDs and plain JSON Schema.

One walker turns a pydantic model into a schema in one of two dialects:
- `Dialect.K8S`: a structural openAPIV3Schema (every node typed, no $ref/anyOf, OpenAPI 3.0's
  boolean `exclusiveMinimum`, free-form Kubernetes structures as
  `x-kubernetes-preserve-unknown-fields`, CEL rules from `celrules.py`);
- `Dialect.JSON_SCHEMA`: draft-07 JSON Schema with `additionalProperties: false`, for a Helm
  chart's `values.schema.json` and for strict checks of manifests (unknown fields refused, as
  `kubectl --validate=strict` does).
Descriptions come from the field descriptions, so the CRD documents itself (`kubectl explain`).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any

import annotated_types as at
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from moeplane.api.celrules import CEL_RULES, CelRule
from moeplane.api.spec import GROUP, VERSION, MoEDeployment, MoEPool


class Dialect(StrEnum):
    K8S = "k8s"
    JSON_SCHEMA = "json-schema"


class SchemaError(TypeError):
    """A model field whose type has no schema mapping."""


def model_schema(
    model: type[BaseModel],
    dialect: Dialect = Dialect.K8S,
    rules: Mapping[type[BaseModel], Sequence[CelRule]] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """The object schema of `model`, nested models inlined."""
    rules = CEL_RULES if rules is None else rules
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        wire = field.alias or name
        props[wire] = _field_schema(model, name, field, dialect, rules)
        if field.is_required():
            required.append(wire)
    out: dict[str, Any] = {"type": "object"}
    text = description or _doc(model)
    if text:
        out["description"] = text
    out["properties"] = props
    if required:
        out["required"] = required
    if dialect is Dialect.JSON_SCHEMA and model.model_config.get("extra") == "forbid":
        out["additionalProperties"] = False
    if dialect is Dialect.K8S and rules.get(model):
        out["x-kubernetes-validations"] = [r.to_k8s() for r in rules[model]]
    return out


def _doc(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ") if doc and model.__module__.startswith("moeplane") else ""


def _field_schema(
    owner: type[BaseModel],
    name: str,
    field: FieldInfo,
    dialect: Dialect,
    rules: Mapping[type[BaseModel], Sequence[CelRule]],
) -> dict[str, Any]:
    try:
        out = _type_schema(field.annotation, dialect, rules, field.description)
    except SchemaError as err:
        raise SchemaError(f"{owner.__name__}.{name}: {err}") from None
    if field.description and "description" not in out:
        out = {"description": field.description, **out}
    for constraint in field.metadata:
        out.update(_constraint(constraint, dialect))
    default = _default(field)
    if default is not None:
        out["default"] = default
    return out


def _default(field: FieldInfo) -> Any:
    """Scalar defaults, and `{}` for objects whose fields all have defaults (so nested defaults
    apply as in the models). None when there is nothing to write."""
    if field.is_required():
        return None
    value = field.get_default(call_default_factory=True)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, BaseModel):
        return {}
    return None


def _constraint(c: object, dialect: Dialect) -> dict[str, Any]:
    k8s = dialect is Dialect.K8S
    if isinstance(c, at.Gt):
        return {"minimum": c.gt, "exclusiveMinimum": True} if k8s else {"exclusiveMinimum": c.gt}
    if isinstance(c, at.Lt):
        return {"maximum": c.lt, "exclusiveMaximum": True} if k8s else {"exclusiveMaximum": c.lt}
    if isinstance(c, at.Ge):
        return {"minimum": c.ge}
    if isinstance(c, at.Le):
        return {"maximum": c.le}
    if isinstance(c, at.MinLen):
        return {"minLength": c.min_length}
    if isinstance(c, at.MaxLen):
        return {"maxLength": c.max_length}
    raise SchemaError(f"unsupported constraint {c!r}")


def _type_schema(
    tp: Any,
    dialect: Dialect,
    rules: Mapping[type[BaseModel], Sequence[CelRule]],
    description: str | None = None,
) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:  # Structural schemas have no anyOf at field level.
            raise SchemaError(f"union {tp!r} has no structural form")
        return _type_schema(rest[0], dialect, rules, description)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return model_schema(tp, dialect, rules, description)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if origin is typing.Literal:
        return {"type": "string", "enum": list(args)}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", "format": "int64"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is datetime:
        return {"type": "string", "format": "date-time"}
    if origin is dict:
        value = args[1] if args else Any
        if value is Any:
            return _free_form(dialect)
        return {"type": "object", "additionalProperties": _type_schema(value, dialect, rules)}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], dialect, rules)}
    raise SchemaError(f"type {tp!r} has no schema mapping")


def _free_form(dialect: Dialect) -> dict[str, Any]:
    """A Kubernetes structure we pass through (resources, tolerations, affinity)."""
    if dialect is Dialect.K8S:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {"type": "object"}


def resource_schema(model: type[BaseModel], dialect: Dialect = Dialect.K8S) -> dict[str, Any]:
    """The openAPIV3Schema of a top-level object: apiVersion, kind, metadata, spec, status."""
    fields = model.model_fields
    spec_field, status_field = fields["spec"], fields["status"]
    props: dict[str, Any] = {
        "apiVersion": {"type": "string", "description": "moeplane.io/v1alpha1"},
        "kind": {"type": "string", "description": model.__name__},
        "metadata": {"type": "object"},
        "spec": _type_schema(spec_field.annotation, dialect, CEL_RULES),
        "status": _type_schema(status_field.annotation, dialect, CEL_RULES),
    }
    if dialect is Dialect.JSON_SCHEMA:
        props["apiVersion"]["enum"] = [f"{GROUP}/{VERSION}"]
        props["kind"]["enum"] = [model.__name__]
    return {"type": "object", "properties": props, "required": ["spec"]}


def _column(name: str, path: str, kind: str = "string", priority: int = 0, text: str = "") -> dict:
    out: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path}
    if text:
        out["description"] = text
    if priority:
        out["priority"] = priority
    return out


_READY = '.status.conditions[?(@.type=="Ready")].status'
_AGE = _column("Age", ".metadata.creationTimestamp", "date")


def _crd(model: type[BaseModel], plural: str, short: list[str], subresources: dict, columns: list) -> dict:
    kind = model.__name__
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["moeplane"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": resource_schema(model)},
                }
            ],
        },
    }


def deployment_crd() -> dict[str, Any]:
    return _crd(
        MoEDeployment,
        "moedeployments",
        ["moed"],
        {"status": {}},
        [
            _column("Model", ".spec.model.preset"),
            _column("GPU", ".spec.hardware.gpu"),
            _column("Prefill-EP", ".spec.prefill.expertParallel", "integer"),
            _column("Prefill", ".status.prefill.readyGroups", "integer", text="Ready prefill EP groups."),
            _column("Decode-EP", ".spec.decode.expertParallel", "integer"),
            _column("Decode", ".status.decode.readyGroups", "integer", text="Ready decode EP groups."),
            _column("GPUs", ".status.totalGpus", "integer", priority=1),
            _column("Ready", _READY),
            _AGE,
        ],
    )


def pool_crd() -> dict[str, Any]:
    return _crd(
        MoEPool,
        "moepools",
        ["moep"],
        {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        [
            _column("Role", ".spec.role"),
            _column("Deployment", ".spec.deploymentName"),
            _column("EP", ".spec.layout.expertParallel", "integer"),
            _column("Nodes/Group", ".spec.layout.nodesPerGroup", "integer"),
            _column("Desired", ".spec.replicas", "integer"),
            _column("Ready", ".status.readyGroups", "integer"),
            _AGE,
        ],
    )


HEADER = "# Generated by `moeplane crds` from the models in api/. Do not edit; run `make crds`.\n"

CRD_FILES: dict[str, typing.Callable[[], dict[str, Any]]] = {
    "moedeployment.yaml": deployment_crd,
    "moepool.yaml": pool_crd,
}


def render(crd: dict[str, Any]) -> str:
    """Deterministic YAML text of one CRD, with the generated-file header."""
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)


def rendered_files() -> dict[str, str]:
    """File name -> text for every generated CRD."""
    return {name: render(build()) for name, build in CRD_FILES.items()}


_NOT_STRUCTURAL = ("$ref", "anyOf", "oneOf", "allOf", "not", "definitions", "$defs")


def structural_problems(schema: dict[str, Any], path: str = "") -> list[str]:
    """Where `schema` breaks Kubernetes' structural-schema rules (the subset a generator can
    break): untyped nodes, references and combinators, properties beside additionalProperties,
    and free-form fields outside objects."""
    where = path or "(root)"
    problems = [f"{where}: {key} is not allowed" for key in _NOT_STRUCTURAL if key in schema]
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "type" not in schema and not preserve:
        problems.append(f"{where}: has no type")
    if preserve and schema.get("type") not in (None, "object"):
        problems.append(f"{where}: x-kubernetes-preserve-unknown-fields on a {schema.get('type')}")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{where}: properties and additionalProperties together")
    for key, sub in (schema.get("properties") or {}).items():
        problems += structural_problems(sub, f"{path}.{key}")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], f"{path}[*]")
    if isinstance(schema.get("items"), dict):
        problems += structural_problems(schema["items"], f"{path}[]")
    return problems


def values_json_schema(model: type[BaseModel], title: str | None = None) -> dict[str, Any]:
    """A standalone draft-07 JSON Schema of `model` (e.g. a Helm chart's values.schema.json)."""
    out: dict[str, Any] = {"$schema": "http://json-schema.org/draft-07/schema#"}
    if title:
        out["title"] = title
    out.update(model_schema(model, Dialect.JSON_SCHEMA))
    return out
