"""Discovery documents (`/api`, `/apis`, `/apis/{group}/{version}`) and OpenAPI v3 (`/openapi/v3`).

kubectl reads `/openapi/v3` before every `apply`: it looks for the `fieldValidation` query
parameter on each kind's PATCH operation and, finding it, lets the server validate (strict field
validation), which is what the emulator then does with the CRD's schema and CEL rules.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.kube.registry import Registry
from tests.kube.resources import ALL_VERBS, ResourceDef

SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-moeplane-emulator",
    "gitCommit": "emulated",
    "gitTreeState": "clean",
    "buildDate": "2025-04-23T00:00:00Z",
    "goVersion": "go1.24",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def _group_entry(group: str, versions: list[str]) -> dict[str, Any]:
    ordered = sorted(versions, reverse=True)
    return {
        "name": group,
        "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered],
        "preferredVersion": {"groupVersion": f"{group}/{ordered[0]}", "version": ordered[0]},
    }


def api_group_list(registry: Registry) -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for group, version in registry.group_versions():
        if group:
            groups.setdefault(group, []).append(version)
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group_entry(g, vs) for g, vs in sorted(groups.items())],
    }


def api_group(registry: Registry, group: str) -> dict[str, Any] | None:
    versions = [v for g, v in registry.group_versions() if g == group]
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group, versions)}


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    defs = registry.served_in(group, version)
    if not defs:
        return None
    resources: list[dict[str, Any]] = []
    for d in sorted(defs, key=lambda d: d.plural):
        resources.append(
            {
                "name": d.plural,
                "singularName": d.singular_name,
                "namespaced": d.namespaced,
                "kind": d.kind,
                "verbs": list(ALL_VERBS),
                "shortNames": list(d.short_names),
                "categories": list(d.categories),
                "storageVersionHash": hashlib.sha256(d.describe().encode()).hexdigest()[:12],
            }
        )
        if d.status_subresource:
            resources.append(
                {
                    "name": f"{d.plural}/status",
                    "singularName": "",
                    "namespaced": d.namespaced,
                    "kind": d.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        if d.scale is not None:
            resources.append(
                {
                    "name": f"{d.plural}/scale",
                    "singularName": "",
                    "namespaced": d.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


# ---- OpenAPI v3 --------------------------------------------------------------------------------
def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def schema_name(d: ResourceDef) -> str:
    if not d.group:
        return f"io.k8s.api.core.{d.version}.{d.kind}"
    if "." not in d.group:
        return f"io.k8s.api.{d.group}.{d.version}.{d.kind}"
    return ".".join(reversed(d.group.split("."))) + f".{d.version}.{d.kind}"


def _gvk(d: ResourceDef) -> dict[str, str]:
    return {"group": d.group, "version": d.version, "kind": d.kind}


_WRITE_PARAMS = [
    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
]


def _op(d: ResourceDef, action: str, ref: str, params: list[dict[str, Any]], body_types: list[str]) -> dict:
    op: dict[str, Any] = {
        "operationId": f"{action}{d.kind}",
        "parameters": params,
        "responses": {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
            }
        },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(d),
    }
    if body_types:
        op["requestBody"] = {
            "content": {t: {"schema": {"$ref": f"#/components/schemas/{ref}"}} for t in body_types}
        }
    return op


def openapi_v3_index(registry: Registry) -> dict[str, Any]:
    paths = {}
    for group, version in registry.group_versions():
        gv = _gv_path(group, version)
        digest = (
            hashlib.sha256(json.dumps(openapi_v3_document(registry, group, version), sort_keys=True).encode())
            .hexdigest()[:16]
            .upper()
        )
        paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
    return {"paths": paths}


def openapi_v3_document(registry: Registry, group: str, version: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    patch_types = [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    ]
    for d in registry.served_in(group, version):
        ref = schema_name(d)
        schema = (
            dict(d.schema) if d.schema else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        )
        schema["x-kubernetes-group-version-kind"] = [_gvk(d)]
        schemas[ref] = schema
        prefix = "/" + _gv_path(group, version) + ("/namespaces/{namespace}" if d.namespaced else "")
        # Custom resources do not support strategic merge patch; built-in kinds do.
        types = patch_types
        paths[f"{prefix}/{d.plural}"] = {
            "get": _op(d, "list", ref, [], []),
            "post": _op(d, "post", ref, _WRITE_PARAMS, ["application/json"]),
        }
        paths[f"{prefix}/{d.plural}/{{name}}"] = {
            "get": _op(d, "get", ref, [], []),
            "put": _op(d, "put", ref, _WRITE_PARAMS, ["application/json"]),
            "patch": _op(
                d,
                "patch",
                ref,
                [*_WRITE_PARAMS, {"name": "force", "in": "query", "schema": {"type": "boolean"}}],
                types,
            ),
            "delete": _op(
                d, "delete", ref, [{"name": "dryRun", "in": "query", "schema": {"type": "string"}}], []
            ),
        }
        for sub in d.subresources:
            paths[f"{prefix}/{d.plural}/{{name}}/{sub}"] = {
                "get": _op(d, "get", ref, [], []),
                "put": _op(d, "put", ref, _WRITE_PARAMS, ["application/json"]),
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }
