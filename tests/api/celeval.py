"""Evaluate a CRD schema's `x-kubernetes-validations` against an object, as the API server does.

Uses Google's CEL runtime from PyPI (`cel-expr-python`, a test extra), imported on first use.
Values are converted by their schema type first, as Kubernetes does: a `type: number` field is a
CEL double even when the manifest wrote `600`, an `integer` is an int. Rules on a node run only
when the node is present. The tests, and an emulated API server, use this to check manifests
against the generated CRDs without a cluster.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class CelViolation:
    """A rule that evaluated to false (or failed): where and the message the API server gives."""

    path: str
    message: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@lru_cache(maxsize=1)
def _env() -> Any:
    try:
        from cel_expr_python import cel
    except ImportError as err:  # A test extra; say which package is missing.
        raise ImportError("evaluating CEL rules needs the PyPI package cel-expr-python") from err
    return cel, cel.NewEnv(variables={"self": cel.Type.DYN})


@lru_cache(maxsize=512)
def _compile(source: str) -> Any:
    _, env = _env()
    return env.compile(source)


def _eval(source: str, value: Any) -> tuple[bool, Any]:
    """(ok, result): ok is False when evaluation failed; result is the plain Python value."""
    cel, env = _env()
    result = _compile(source).eval(env.Activation({"self": value}))
    if result.type() == cel.Type.ERROR:
        return False, str(result)
    return True, result.plain_value()


def to_cel(schema: dict[str, Any], value: Any) -> Any:
    """`value` with numbers typed by `schema` (number -> float, integer -> int)."""
    kind = schema.get("type")
    if value is None:
        return None
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "object" and isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is not None:
            return {k: to_cel(props[k], v) if k in props else v for k, v in value.items()}
        if isinstance(extra, dict):
            return {k: to_cel(extra, v) for k, v in value.items()}
        return value
    if kind == "array" and isinstance(value, list):
        return [to_cel(schema.get("items", {}), v) for v in value]
    return value


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """`obj` with the schema's defaults filled in, as the API server does before validating:
    a missing property with a `default` gets it, then defaults apply inside it too."""
    if schema.get("type") == "object" and isinstance(obj, dict):
        out = dict(obj)
        for key, sub in (schema.get("properties") or {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(sub, out[key])
        return out
    if schema.get("type") == "array" and isinstance(obj, list):
        return [apply_defaults(schema.get("items", {}), v) for v in obj]
    return obj


def evaluate_rules(schema: dict[str, Any], obj: Any, path: str = "") -> list[CelViolation]:
    """Every violated rule in `obj` (a wire-form dict) under `schema` (an openAPIV3Schema)."""
    if obj is None:
        return []
    out: list[CelViolation] = []
    kind = schema.get("type")
    if kind == "object" and isinstance(obj, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key in obj:
                out += evaluate_rules(sub, obj[key], f"{path}.{key}" if path else key)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in obj.items():
                out += evaluate_rules(extra, value, f"{path}[{key}]")
    elif kind == "array" and isinstance(obj, list):
        for index, item in enumerate(obj):
            out += evaluate_rules(schema.get("items", {}), item, f"{path}[{index}]")
    rules = schema.get("x-kubernetes-validations") or []
    if rules:
        value = to_cel(schema, obj)
        for rule in rules:
            out += _check(rule, value, path)
    return out


def _check(rule: dict[str, str], value: Any, path: str) -> list[CelViolation]:
    ok, result = _eval(rule["rule"], value)
    where = path + rule.get("fieldPath", "")
    if not ok:
        return [CelViolation(where, f"rule failed to evaluate: {result}", rule["rule"])]
    if result is True:
        return []
    message = rule.get("message", "failed rule: " + rule["rule"])
    if "messageExpression" in rule:
        ok, text = _eval(rule["messageExpression"], value)
        if ok and isinstance(text, str) and text:
            message = text
    return [CelViolation(where, message, rule["rule"])]
