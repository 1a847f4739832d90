"""Structural-schema handling of custom resources, as the API server does it on create and update:

1. unknown fields: rejected under `fieldValidation=Strict` (kubectl's default), pruned otherwise;
2. defaults applied;
3. OpenAPI v3 validation with the server's field-path messages;
4. CEL rules (`x-kubernetes-validations`), with `oldSelf` transition rules on updates.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tests.kube.cel_rules import CelRules

Schema = Mapping[str, Any]
_META_FIELDS = {"apiVersion", "kind", "metadata"}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _shown(value: Any) -> str:
    """How the API server prints a bad value in `Invalid value: ...`."""
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _properties_schema(schema: Schema, key: str) -> Schema | None:
    props = schema.get("properties") or {}
    if key in props:
        return props[key]
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        return additional
    if additional is True or schema.get("x-kubernetes-preserve-unknown-fields"):
        return {"x-kubernetes-preserve-unknown-fields": True}
    return None


def prune(value: Any, schema: Schema, path: str, unknown: list[str], top: bool = False) -> Any:
    """Drop fields the schema does not know, recording their paths in `unknown`."""
    if isinstance(value, dict) and schema.get("type", "object") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
            return value
        result = {}
        for key, item in value.items():
            if top and key in _META_FIELDS:
                result[key] = item
                continue
            sub = _properties_schema(schema, key)
            if sub is None:
                unknown.append(_join(path, key))
                continue
            result[key] = prune(item, sub, _join(path, key), unknown)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune(item, schema["items"], f"{path}[{n}]", unknown) for n, item in enumerate(value)]
    return value


def apply_defaults(value: Any, schema: Schema) -> Any:
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, Mapping):
            for key in list(value):
                if key not in (schema.get("properties") or {}):
                    value[key] = apply_defaults(value[key], additional)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def _check_type(value: Any, schema: Schema, path: str) -> str | None:
    expected = schema.get("type")
    if value is None:
        return (
            None
            if schema.get("nullable")
            else f'{path}: Invalid value: "null": {path} in body must be '
            f'of type {expected or "object"}: "null"'
        )
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        return (
            None
            if ok
            else f"{path}: Invalid value: {_shown(value)}: {path} in body must be of type "
            f'int-or-string: "{_type_name(value)}"'
        )
    if not expected:
        return None
    actual = _type_name(value)
    ok = actual == expected or (expected == "number" and actual == "integer")
    return (
        None
        if ok
        else f'{path}: Invalid value: "{actual}": {path} in body must be of type {expected}: "{actual}"'
    )


def _check_scalar(value: Any, schema: Schema, path: str, problems: list[str]) -> None:
    shown = _shown(value)
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_shown(v) for v in schema["enum"])
        problems.append(f"{path}: Unsupported value: {shown}: supported values: {supported}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema:
            low = schema["minimum"]
            if value < low or (schema.get("exclusiveMinimum") is True and value == low):
                word = (
                    "greater than" if schema.get("exclusiveMinimum") is True else "greater than or equal to"
                )
                problems.append(f"{path}: Invalid value: {shown}: {path} in body should be {word} {low}")
        if "maximum" in schema:
            high = schema["maximum"]
            if value > high or (schema.get("exclusiveMaximum") is True and value == high):
                word = "less than" if schema.get("exclusiveMaximum") is True else "less than or equal to"
                problems.append(f"{path}: Invalid value: {shown}: {path} in body should be {word} {high}")
        if "multipleOf" in schema and value % schema["multipleOf"]:
            problems.append(
                f"{path}: Invalid value: {shown}: {path} in body should be a multiple of "
                f"{schema['multipleOf']}"
            )
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(
                f"{path}: Invalid value: {shown}: {path} in body should be at least "
                f"{schema['minLength']} chars long"
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{path}: Too long: may not be more than {schema['maxLength']} bytes")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(
                f"{path}: Invalid value: {shown}: {path} in body should match '{schema['pattern']}'"
            )


def validate(value: Any, schema: Schema, path: str, problems: list[str]) -> None:
    """OpenAPI v3 validation of one node and its children; messages use the server's wording."""
    type_problem = _check_type(value, schema, path)
    if type_problem:
        problems.append(type_problem)
        return
    if value is None:
        return
    _check_scalar(value, schema, path, problems)
    if isinstance(value, dict):
        for key in schema.get("required") or ():
            if key not in value:
                problems.append(f"{_join(path, key)}: Required value")
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            problems.append(
                f"{path}: Invalid value: {len(value)}: {path} in body should have at least "
                f"{schema['minProperties']} properties"
            )
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            problems.append(
                f"{path}: Too many: {len(value)}: must have at most {schema['maxProperties']} items"
            )
        for key, item in value.items():
            if not path and key in _META_FIELDS:
                continue
            sub = _properties_schema(schema, key)
            if sub is not None:
                validate(item, sub, _join(path, key), problems)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            problems.append(
                f"{path}: Invalid value: {len(value)}: {path} in body should have at least "
                f"{schema['minItems']} items"
            )
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{path}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
        list_type = schema.get("x-kubernetes-list-type")
        if schema.get("uniqueItems") or list_type == "set":
            seen: list[Any] = []
            for n, item in enumerate(value):
                if item in seen:
                    problems.append(f"{path}[{n}]: Duplicate value: {_shown(item)}")
                seen.append(item)
        if list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen_keys: list[tuple[Any, ...]] = []
            for n, item in enumerate(value):
                key_tuple = tuple((item or {}).get(k) for k in keys)
                if key_tuple in seen_keys:
                    problems.append(f"{path}[{n}]: Duplicate value: {{{', '.join(map(_shown, key_tuple))}}}")
                seen_keys.append(key_tuple)
        if isinstance(schema.get("items"), Mapping):
            for n, item in enumerate(value):
                validate(item, schema["items"], f"{path}[{n}]", problems)
    for combinator in ("allOf", "anyOf", "oneOf"):
        branches = schema.get(combinator) or []
        if not branches:
            continue
        results = []
        for branch in branches:
            sub_problems: list[str] = []
            validate(value, {**branch, "type": branch.get("type")}, path, sub_problems)
            results.append(sub_problems)
        passed = sum(1 for r in results if not r)
        if combinator == "allOf":
            for r in results:
                problems.extend(r)
        elif combinator == "anyOf" and not passed:
            problems.append(
                f"{path}: Invalid value: {_shown(value)}: {path} in body must match at least one "
                f"schema in anyOf"
            )
        elif combinator == "oneOf" and passed != 1:
            problems.append(
                f"{path}: Invalid value: {_shown(value)}: {path} in body must match exactly one "
                f"schema in oneOf"
            )


@dataclass
class CustomResourceSchema:
    """The compiled schema of one CRD version. Raises at construction when a CEL rule does not compile."""

    schema: Schema

    def __post_init__(self) -> None:
        self.rules = CelRules(self.schema)

    def admit(
        self, obj: dict[str, Any], old: Mapping[str, Any] | None, strict: bool
    ) -> tuple[dict[str, Any], list[str], list[str]]:
        """Return (pruned and defaulted object, unknown field paths, validation problems)."""
        unknown: list[str] = []
        pruned = prune(obj, self.schema, "", unknown, top=True)
        if strict and unknown:
            return obj, unknown, []
        unknown = []  # without Strict, the server drops unknown fields silently
        defaulted = apply_defaults(pruned, self.schema)
        problems: list[str] = []
        body = {k: v for k, v in defaulted.items() if k not in _META_FIELDS}
        validate(
            body,
            {
                **self.schema,
                "required": [r for r in self.schema.get("required") or [] if r not in _META_FIELDS],
            },
            "",
            problems,
        )
        if not problems:
            old_body = None if old is None else {k: v for k, v in old.items() if k not in _META_FIELDS}
            problems.extend(self.rules.check(body, old_body))
        return defaulted, unknown, problems
