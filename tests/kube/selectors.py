"""Label and field selectors (`?labelSelector=`, `?fieldSelector=`) and the small JSONPath subset
that CRD printer columns and scale paths use."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from tests.kube.errors import bad_request

Predicate = Callable[[Mapping[str, Any]], bool]

_SET_RE = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside `in (a,b)` parentheses."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _label_requirement(term: str) -> Predicate:
    match = _SET_RE.match(term)
    if match:
        key, op, values_text = match.groups()
        values = {v.strip() for v in values_text.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, value = (s.strip() for s in term.split(op, 1))
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        key = term[1:].strip()
        return lambda labels: key not in labels
    if re.fullmatch(r"[\w./-]+", term):
        return lambda labels: term in labels
    raise bad_request(f"unable to parse requirement: {term!r}")


def label_selector(text: str | None) -> Predicate:
    """A predicate over an object's labels for a selector like `a=b,c!=d,e in (x,y),!f`."""
    if not text:
        return lambda obj: True
    requirements = [_label_requirement(term) for term in _split_top_level(text)]

    def matches(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(req(labels) for req in requirements)

    return matches


def selector_from_match_labels(match_labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))


def field_selector(text: str | None) -> Predicate:
    """`metadata.name=x,metadata.namespace!=y` and any other dotted path with = / == / !=."""
    if not text:
        return lambda obj: True
    checks: list[tuple[str, bool, str]] = []
    for term in _split_top_level(text):
        for op in ("!=", "==", "="):
            if op in term:
                path, value = (s.strip() for s in term.split(op, 1))
                checks.append((path, op != "!=", value))
                break
        else:
            raise bad_request(f"invalid field selector: {term!r}")

    def matches(obj: Mapping[str, Any]) -> bool:
        for path, equal, value in checks:
            found = get_path(obj, "." + path)
            found_text = "" if found is None else str(found)
            if (found_text == value) != equal:
                return False
        return True

    return matches


_SEGMENT_RE = re.compile(r"\.([\w-]+)|\[(\d+)\]|\[\?\(@\.([\w.]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]")


def get_path(obj: Any, path: str) -> Any:
    """Evaluate `.a.b[0].c` or `.status.conditions[?(@.type=="Ready")].status`; None when absent."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    current = obj
    for match in _SEGMENT_RE.finditer(path):
        key, index, filter_key, filter_value = match.groups()
        if current is None:
            return None
        if key is not None:
            current = current.get(key) if isinstance(current, Mapping) else None
        elif index is not None:
            idx = int(index)
            current = current[idx] if isinstance(current, list) and idx < len(current) else None
        else:
            items = current if isinstance(current, list) else []
            current = next(
                (item for item in items if str(get_path(item, "." + filter_key)) == filter_value), None
            )
    return current


def set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    """Set a plain dotted path (`.spec.replicas`), creating the intermediate objects."""
    keys = [k for k in path.strip().lstrip(".").split(".") if k]
    current = obj
    for key in keys[:-1]:
        nxt = current.get(key)
        if not isinstance(nxt, dict):
            nxt = current[key] = {}
        current = nxt
    current[keys[-1]] = value
