"""Object metadata rules the API server enforces: names, labels, annotations, and timestamps."""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

# Kinds whose names must be DNS-1035 labels (a Service name becomes a DNS label).
_DNS1035_KINDS = {"Service"}
# Kinds whose names must be DNS-1123 labels (63 characters).
_DNS1123_LABEL_KINDS = {"Namespace"}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_name(kind: str, name: str) -> list[str]:
    if kind in _DNS1035_KINDS:
        if len(name) > 63:
            return [f"metadata.name: Invalid value: {name!r}: must be no more than 63 characters"]
        if not _DNS1035_LABEL.match(name):
            return [
                f"metadata.name: Invalid value: {name!r}: a DNS-1035 label must consist of lower case "
                f"alphanumeric characters or '-', start with an alphabetic character, and end with an "
                f"alphanumeric character"
            ]
        return []
    if kind in _DNS1123_LABEL_KINDS:
        if len(name) > 63 or not _DNS1123_LABEL.match(name):
            return [
                f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 label must consist of lower "
                f"case alphanumeric characters or '-', and must start and end with an alphanumeric "
                f"character (at most 63 characters)"
            ]
        return []
    if len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        return [
            f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain must consist of lower "
            f"case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
            f"character (at most 253 characters)"
        ]
    return []


def _check_key(field: str, key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    problems = []
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        problems.append(f"{field}: Invalid value: {key!r}: prefix part must be a DNS-1123 subdomain")
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        problems.append(
            f"{field}: Invalid value: {key!r}: name part must consist of alphanumeric characters, "
            f"'-', '_' or '.', and must start and end with an alphanumeric character "
            f"(at most 63 characters)"
        )
    return problems


def check_metadata(kind: str, meta: Mapping[str, Any]) -> list[str]:
    """The problems a real server reports for `metadata` (empty when it is acceptable)."""
    problems = check_name(kind, str(meta.get("name", "")))
    for key, value in (meta.get("labels") or {}).items():
        problems += _check_key("metadata.labels", key)
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(
                f"metadata.labels: Invalid value: {value!r}: a valid label must be an empty string "
                f"or consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                f"with an alphanumeric character (at most 63 characters)"
            )
    annotations = meta.get("annotations") or {}
    for key in annotations:
        problems += _check_key("metadata.annotations", key)
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > 256 * 1024:
        problems.append("metadata.annotations: Too long: must have at most 262144 bytes")
    for n, ref in enumerate(meta.get("ownerReferences") or ()):
        for required in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(required):
                problems.append(f"metadata.ownerReferences[{n}].{required}: Required value")
    controllers = sum(1 for ref in meta.get("ownerReferences") or () if ref.get("controller"))
    if controllers > 1:
        problems.append(
            "metadata.ownerReferences: Invalid value: only one reference can have Controller set to true"
        )
    return problems
