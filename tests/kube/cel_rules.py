"""CEL validation rules of a CRD schema (`x-kubernetes-validations`), evaluated like the API server.

`self` is the value of the schema node carrying the rule; `oldSelf` the same node of the stored
object on updates. Rules that mention `oldSelf` are transition rules: skipped on create and when
the old value is absent. Values are typed by the schema first (a `number` field is a double even
when the JSON says `2`), as the server does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_math, ext_strings

Schema = Mapping[str, Any]
_OLD_SELF = re.compile(r"\boldSelf\b")
_REASON_FORMAT = {
    "FieldValueForbidden": "{path}: Forbidden: {message}",
    "FieldValueRequired": "{path}: Required value: {message}",
    "FieldValueDuplicate": "{path}: Duplicate value: {message}",
}


class RuleCompileError(ValueError):
    """A rule that does not compile; the CRD is rejected with the schema path of the rule."""


@dataclass(frozen=True)
class _Rule:
    expression: Any
    message_expression: Any | None
    rule: str
    message: str
    reason: str
    field_path: str
    transition: bool


def _new_env() -> Any:
    return cel.NewEnv(
        variables={"self": cel.Type.DYN, "oldSelf": cel.Type.DYN},
        extensions=[ext_strings.ExtStrings(), ext_math.ExtMath()],
    )


def typed(value: Any, schema: Schema) -> Any:
    """Convert JSON values to the CEL types the schema declares."""
    kind = schema.get("type")
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        return {
            k: typed(v, props.get(k) or (additional if isinstance(additional, Mapping) else {}))
            for k, v in value.items()
        }
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), Mapping) else {}
        return [typed(v, items) for v in value]
    return value


class CelRules:
    """All rules of one schema, compiled once."""

    def __init__(self, schema: Schema) -> None:
        self._env = _new_env()
        self._schema = schema
        self._compiled: dict[int, list[_Rule]] = {}
        for node, where in _walk_schema(schema, "openAPIV3Schema"):
            rules = []
            for n, raw in enumerate(node.get("x-kubernetes-validations") or ()):
                rule = str(raw.get("rule", ""))
                try:
                    expression = self._env.compile(rule)
                    message_expr = raw.get("messageExpression")
                    compiled_message = self._env.compile(message_expr) if message_expr else None
                except RuntimeError as exc:
                    raise RuleCompileError(
                        f"{where}.x-kubernetes-validations[{n}].rule: Invalid value: {rule!r}: "
                        f"compilation failed: {exc}"
                    ) from None
                rules.append(
                    _Rule(
                        expression=expression,
                        message_expression=compiled_message,
                        rule=rule,
                        message=str(raw.get("message", "")),
                        reason=str(raw.get("reason", "FieldValueInvalid")),
                        field_path=str(raw.get("fieldPath", "")),
                        transition=bool(_OLD_SELF.search(rule)) and not raw.get("optionalOldSelf"),
                    )
                )
            if rules:
                self._compiled[id(node)] = rules

    def check(self, value: Any, old: Any) -> list[str]:
        problems: list[str] = []
        if self._compiled:
            self._check_node(value, old, self._schema, "", problems)
        return problems

    def _check_node(self, value: Any, old: Any, schema: Schema, path: str, problems: list[str]) -> None:
        if value is None:
            return
        for rule in self._compiled.get(id(schema), ()):
            if rule.transition and old is None:
                continue
            data = {"self": typed(value, schema), "oldSelf": typed(old, schema) if old is not None else None}
            result = rule.expression.eval(data=data)
            kind = result.type().name()
            where = (path or "<nil>") + rule.field_path if rule.field_path else (path or "<nil>")
            if kind == "BOOL" and result.plain_value() is True:
                continue
            if kind == "BOOL":
                message = rule.message or f"failed rule: {rule.rule}"
                if rule.message_expression is not None:
                    custom = rule.message_expression.eval(data=data)
                    if custom.type().name() == "STRING" and custom.plain_value():
                        message = str(custom.plain_value())
            else:
                message = f"{rule.rule}: evaluation error: {result.value()}"
            template = _REASON_FORMAT.get(rule.reason, '{path}: Invalid value: "{kind}": {message}')
            problems.append(template.format(path=where, kind=schema.get("type", "object"), message=message))
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            additional = schema.get("additionalProperties")
            old_map = old if isinstance(old, dict) else {}
            for key, item in value.items():
                sub = props.get(key) or (additional if isinstance(additional, Mapping) else None)
                if sub is not None:
                    self._check_node(item, old_map.get(key), sub, f"{path}.{key}" if path else key, problems)
        elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
            for n, item in enumerate(value):
                self._check_node(item, None, schema["items"], f"{path}[{n}]", problems)


def _walk_schema(schema: Schema, where: str) -> Iterator[tuple[Schema, str]]:
    yield schema, where
    for key, sub in (schema.get("properties") or {}).items():
        yield from _walk_schema(sub, f"{where}.properties[{key}]")
    if isinstance(schema.get("items"), Mapping):
        yield from _walk_schema(schema["items"], f"{where}.items")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from _walk_schema(schema["additionalProperties"], f"{where}.additionalProperties")
