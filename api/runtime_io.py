"""The one reader of the runtime document (`engine.json`), for `moeplane pool` and `moeplane frontend`.

`read_engine_document` parses the file with the `EngineDocument` model, adds the pool's layout
when the operator passed it separately (`MOEPLANE_POOL_LAYOUT`: the MoEPool's `spec.layout`),
and applies `runtime_rules`. Anything wrong stops it with `EngineDocumentError`, whose message
names the file (or the variable) and every field with its problem, e.g.
`engine config /etc/moeplane/engine/engine.json: serving.maxNumSeqs: must be greater than 0 (got 0)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moeplane.api.enums import Role
from moeplane.api.errors import Problem, pydantic_problem
from moeplane.api.layout import GroupLayout
from moeplane.api.podcontract import POOL_LAYOUT_ENV
from moeplane.api.runtime import EngineDocument
from moeplane.api.runtime_rules import runtime_problems
from pydantic import ValidationError


class EngineDocumentError(ValueError):
    """A runtime document that cannot be read or breaks a rule; the message says where and why."""


def _say(where: str, problems: Sequence[Problem]) -> str:
    return f"{where}: " + "; ".join(str(p) for p in problems)


def _load_json(text: str, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineDocumentError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EngineDocumentError(f"{where}: must be a JSON object, got {type(obj).__name__}")
    return obj


def parse_engine_document(obj: dict[str, Any], where: str) -> EngineDocument:
    """The model of `obj` (structure only); `where` prefixes the message."""
    try:
        return EngineDocument.model_validate(obj)
    except ValidationError as exc:
        raise EngineDocumentError(_say(where, [pydantic_problem(e) for e in exc.errors()])) from None


def parse_pool_layout(text: str, where: str = POOL_LAYOUT_ENV) -> GroupLayout:
    """A pool's layout from its JSON wire form (as the operator writes MOEPLANE_POOL_LAYOUT)."""
    obj = _load_json(text, where)
    try:
        return GroupLayout.model_validate(obj)
    except ValidationError as exc:
        raise EngineDocumentError(_say(where, [pydantic_problem(e) for e in exc.errors()])) from None


def read_engine_document(
    path: str | Path,
    *,
    role: Role | None = None,
    pool_layout: str | None = None,
) -> EngineDocument:
    """The validated runtime document at `path` (see `check_engine_document`)."""
    where = f"engine config {path}"
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise EngineDocumentError(f"cannot read the engine config {path}: {exc.strerror or exc}") from None
    return check_engine_document(_load_json(text, where), where, role=role, pool_layout=pool_layout)


def check_engine_document(
    obj: dict[str, Any],
    where: str,
    *,
    role: Role | None = None,
    pool_layout: str | None = None,
) -> EngineDocument:
    """The runtime document of wire form `obj`, parsed by the model and held to `runtime_rules`.

    With `role`, the document must carry that pool's layout: `pool_layout` (the JSON the operator
    passes in MOEPLANE_POOL_LAYOUT), or `pools.<role>` of `obj` (a document written by hand, by a
    test, or resolved in memory by `moeplane up`), not both unless they agree. Raises
    EngineDocumentError naming `where` (or the variable) and each broken field.
    """
    doc = parse_engine_document(obj, where)
    from_env = role is not None and pool_layout is not None
    if role is not None:
        if pool_layout is not None:
            layout = parse_pool_layout(pool_layout)
            if role in doc.pools and doc.pools[role] != layout:
                raise EngineDocumentError(
                    f"{where}: pools.{role.value} differs from the pool's layout in {POOL_LAYOUT_ENV}; "
                    "a pool's layout must come from one place"
                )
            doc = doc.model_copy(update={"pools": {**doc.pools, role: layout}})
        elif role not in doc.pools:
            raise EngineDocumentError(
                f"{where}: pools.{role.value}: is required: the {role.value} pool's layout comes from "
                f"{POOL_LAYOUT_ENV} (the MoEPool's spec.layout, set by the operator) or from the file"
            )
    problems = runtime_problems(doc)
    if not problems:
        return doc
    # A problem in the layout the operator passed in the environment is reported as its.
    env_prefix = f"pools.{role.value}." if from_env and role is not None else None
    in_env = [p for p in problems if env_prefix and p.path.startswith(env_prefix)]
    in_file = [p for p in problems if p not in in_env]
    parts = []
    if in_file:
        parts.append(_say(where, [p.in_document() for p in in_file]))
    if in_env:
        parts.append(_say(POOL_LAYOUT_ENV, [Problem(p.path.removeprefix(env_prefix or ""), p.message)
                                            for p in in_env]))
    raise EngineDocumentError("; ".join(parts))
