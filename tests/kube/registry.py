"""Which resources the emulator serves: the built-ins plus every registered CRD, with compiled schemas."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from tests.kube.cel_rules import RuleCompileError
from tests.kube.errors import ApiError, invalid, not_found
from tests.kube.metadata import now_rfc3339
from tests.kube.resources import BUILTINS, ResourceDef, resources_from_crd
from tests.kube.schema import CustomResourceSchema


class Registry:
    def __init__(self) -> None:
        self._defs: dict[tuple[str, str, str], ResourceDef] = {}
        self._schemas: dict[tuple[str, str, str], CustomResourceSchema] = {}
        self._crd_versions: dict[str, list[tuple[str, str, str]]] = {}
        self.generation = 0  # bumped on every change: discovery and OpenAPI caches key on it
        for d in BUILTINS:
            self._defs[(d.group, d.version, d.plural)] = d

    def __iter__(self) -> Iterator[ResourceDef]:
        return iter(list(self._defs.values()))

    def resolve(self, group: str, version: str, plural: str) -> ResourceDef:
        found = self._defs.get((group, version, plural))
        if found is None:
            raise ApiError(
                404,
                "NotFound",
                "the server could not find the requested resource",
                {"group": group, "kind": plural},
            )
        return found

    def find(self, group: str, version: str, plural: str) -> ResourceDef | None:
        return self._defs.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceDef:
        group, _, version = api_version.rpartition("/")
        for d in self._defs.values():
            if d.group == group and d.version == version and d.kind == kind:
                return d
        raise not_found("kinds", f"{api_version}/{kind}")

    def storage_def(self, storage_key: tuple[str, str]) -> ResourceDef | None:
        for d in self._defs.values():
            if d.storage_key == storage_key and d.storage:
                return d
        return None

    def schema(self, d: ResourceDef) -> CustomResourceSchema | None:
        return self._schemas.get((d.group, d.version, d.plural))

    def group_versions(self) -> list[tuple[str, str]]:
        return sorted({(d.group, d.version) for d in self._defs.values()})

    def served_in(self, group: str, version: str) -> list[ResourceDef]:
        return [d for d in self._defs.values() if d.group == group and d.version == version]

    # ---- CRDs ----------------------------------------------------------------------------------
    def check_crd(self, crd: Mapping[str, Any]) -> list[tuple[ResourceDef, CustomResourceSchema | None]]:
        """Parse and compile a CRD without registering it; raises 422 naming the bad field."""
        name = str((crd.get("metadata") or {}).get("name"))
        defs = resources_from_crd(crd)
        compiled = []
        for d in defs:
            existing = self._defs.get((d.group, d.version, d.plural))
            if existing is not None and (d.group, d.version, d.plural) not in self._crd_versions.get(
                name, []
            ):
                raise invalid(
                    "CustomResourceDefinition",
                    name,
                    [f"spec.names.plural: Invalid value: {d.plural!r}: the resource is already served"],
                    group="apiextensions.k8s.io",
                )
            try:
                schema = CustomResourceSchema(d.schema) if d.schema else None
            except RuleCompileError as exc:
                raise invalid(
                    "CustomResourceDefinition", name, [f"spec.validation.{exc}"], group="apiextensions.k8s.io"
                ) from None
            compiled.append((d, schema))
        return compiled

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        name = str(crd["metadata"]["name"])
        compiled = self.check_crd(crd)
        self.unregister_crd(name)
        keys = []
        for d, schema in compiled:
            key = (d.group, d.version, d.plural)
            self._defs[key] = d
            if schema is not None:
                self._schemas[key] = schema
            keys.append(key)
        self._crd_versions[name] = keys
        self.generation += 1

    def crd_resources(self, name: str) -> list[ResourceDef]:
        return [self._defs[key] for key in self._crd_versions.get(name, [])]

    def unregister_crd(self, name: str) -> list[ResourceDef]:
        removed = []
        for key in self._crd_versions.pop(name, []):
            removed.append(self._defs.pop(key))
            self._schemas.pop(key, None)
        if removed:
            self.generation += 1
        return removed


def crd_status(crd: Mapping[str, Any]) -> dict[str, Any]:
    """What the API server reports once a CRD is established."""
    names = (crd.get("spec") or {}).get("names") or {}
    when = now_rfc3339()
    return {
        "acceptedNames": names,
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": when,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": when,
            },
        ],
        "storedVersions": [
            v["name"] for v in (crd.get("spec") or {}).get("versions") or [] if v.get("storage")
        ],
    }
