"""Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), which is how
`kubectl get` shows a CRD's additionalPrinterColumns."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from tests.kube.resources import PrinterColumn, ResourceDef
from tests.kube.selectors import get_path


def wants_table(accept: str) -> bool:
    first = accept.split(",", 1)[0]
    return "as=Table" in first


def _age(created: str | None) -> str:
    if not created:
        return "<unknown>"
    then = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _cell(column: PrinterColumn, obj: dict[str, Any]) -> Any:
    value = get_path(obj, column.json_path)
    if column.type == "date":
        return _age(value) if isinstance(value, str) else "<unknown>"
    if value is None:
        return None
    if column.type == "integer" and isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, (dict, list)):
        return str(value)
    return value


def table(d: ResourceDef, objects: Sequence[dict[str, Any]], resource_version: int) -> dict[str, Any]:
    columns: list[PrinterColumn] = [
        PrinterColumn("Name", "string", ".metadata.name", "Name must be unique within a namespace")
    ]
    extra = list(d.printer_columns)
    if not any(c.json_path == ".metadata.creationTimestamp" for c in extra):
        extra.append(PrinterColumn("Age", "date", ".metadata.creationTimestamp"))
    columns += extra
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": str(resource_version)},
        "columnDefinitions": [
            {
                "name": c.name,
                "type": "string" if c.type == "date" else c.type,
                "format": c.format or ("name" if c.name == "Name" else ""),
                "description": c.description,
                "priority": c.priority,
            }
            for c in columns
        ],
        "rows": [
            {
                "cells": [_cell(c, obj) for c in columns],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj.get("metadata", {}),
                },
            }
            for obj in objects
        ],
    }
