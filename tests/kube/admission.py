"""Admission: what the API server checks before it stores an object."""

from __future__ import annotations

from typing import Any

from tests.kube import metadata as meta_rules
from tests.kube.errors import bad_request, invalid
from tests.kube.registry import Registry
from tests.kube.resources import CRD_RESOURCE, ResourceDef

Obj = dict[str, Any]


def admit(registry: Registry, d: ResourceDef, obj: Obj, old: Obj | None, strict: bool) -> Obj:
    """Metadata rules, then (custom resources) pruning or strict unknown fields, defaults, schema, CEL."""
    name = obj["metadata"].get("name", "")
    problems = meta_rules.check_metadata(d.kind, obj["metadata"])
    if problems:
        raise invalid(d.kind, name, problems, d.group)
    if d == CRD_RESOURCE or d.storage_key == CRD_RESOURCE.storage_key:
        registry.check_crd(obj)
    schema = registry.schema(d)
    if schema is None:
        return obj
    admitted, unknown, problems = schema.admit(obj, old, strict)
    if unknown:
        fields = ", ".join(f'unknown field "{u}"' for u in unknown)
        raise bad_request(
            f'{d.kind} in version "{d.version}" cannot be handled as a {d.kind}: '
            f"strict decoding error: {fields}"
        )
    if problems:
        raise invalid(d.kind, name, problems, d.group)
    return admitted
