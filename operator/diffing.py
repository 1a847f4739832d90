"""Desired vs live: what to create, what to patch (only what differs), what to delete. Pure.

A child carries the hash of what the operator last wrote (`moeplane.io/desired-hash`). When the
hash matches, the API server's defaulting (a Service's `clusterIP`, a container's
`terminationMessagePath`) can never make the operator patch again; only the declared drift paths
(replicas someone changed by hand) are compared. When the hash differs, the patch holds exactly
the fields that differ, plus `null` for fields the operator owns and no longer wants.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moeplane.operator.kinds import Kind
from moeplane.operator.names import DESIRED_HASH

Obj = dict[str, Any]
Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Create:
    kind: Kind
    body: Obj

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


@dataclass(frozen=True)
class Patch:
    kind: Kind
    namespace: str
    name: str
    patch: Obj


@dataclass(frozen=True)
class Delete:
    kind: Kind
    namespace: str
    name: str
    uid: str  # precondition: never delete a namesake created after we looked


Action = Create | Patch | Delete


@dataclass(frozen=True)
class ChildPolicy:
    """How one kind of child is compared.

    `prune`: subtrees the operator owns entirely (keys it no longer wants are nulled).
    `drift`: (compare path, patch path) pairs checked even when the hash matches.
    `unhashed`: paths left out of the hash (replicas, which scaling changes without a rollout).
    """

    prune: Sequence[Path] = ()
    drift: Sequence[tuple[Path, Path]] = field(default_factory=tuple)
    unhashed: Sequence[Path] = ()


DEFAULT_POLICY = ChildPolicy()


def _without(obj: Any, path: Path) -> Any:
    if not path:
        return None
    head, rest = path[0], path[1:]
    if isinstance(obj, dict) and isinstance(head, str) and head in obj:
        out = dict(obj)
        if rest:
            out[head] = _without(obj[head], rest)
        else:
            del out[head]
        return out
    if isinstance(obj, list) and isinstance(head, int) and head < len(obj):
        items = list(obj)
        items[head] = _without(obj[head], rest) if rest else None
        return items
    return obj


def desired_hash(obj: Mapping[str, Any], unhashed: Sequence[Path] = ()) -> str:
    content: Any = {k: v for k, v in obj.items() if k != "status"}
    for path in unhashed:
        content = _without(content, path)
    meta = dict(content.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != DESIRED_HASH}
    meta["annotations"] = annotations
    meta.pop("ownerReferences", None)
    content["metadata"] = meta
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[
        :16
    ]


def with_hash(obj: Obj, unhashed: Sequence[Path] = ()) -> Obj:
    out = dict(obj)
    meta = dict(out.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), DESIRED_HASH: desired_hash(obj, unhashed)}
    out["metadata"] = meta
    return out


def merge_diff(desired: Any, live: Any) -> Any:
    """The JSON merge patch setting every field of `desired` that `live` lacks or holds differently."""
    if not isinstance(desired, dict) or not isinstance(live, dict):
        return None if desired == live else desired
    out: Obj = {}
    for key, want in desired.items():
        have = live.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = merge_diff(want, have)
            if sub:
                out[key] = sub
        elif want != have:
            out[key] = want
    return out


def _get(obj: Any, path: Path) -> Any:
    for step in path:
        if isinstance(step, int):
            obj = obj[step] if isinstance(obj, list) and step < len(obj) else None
        else:
            obj = obj.get(step) if isinstance(obj, dict) else None
    return obj


def _put(patch: Obj, path: Path, value: Any) -> None:
    current = patch
    for step in path[:-1]:
        current = current.setdefault(str(step), {})
        if not isinstance(current, dict):
            return  # an ancestor is replaced wholesale already
    current[str(path[-1])] = value


def _prune(desired: Any, live: Any, path: Path, patch: Obj) -> None:
    if not isinstance(desired, dict) or not isinstance(live, dict):
        return
    for key in live:
        if key not in desired:
            _put(patch, (*path, key), None)
        else:
            _prune(desired[key], live[key], (*path, key), patch)


def plan_child(
    kind: Kind, desired: Obj, live: Mapping[str, Any] | None, policy: ChildPolicy = DEFAULT_POLICY
) -> Action | None:
    """Create when missing, patch what differs, or nothing (the no-op resync makes no write)."""
    meta = desired["metadata"]
    if live is None:
        return Create(kind, with_hash(desired, policy.unhashed))
    live_annotations = (live.get("metadata") or {}).get("annotations") or {}
    patch: Obj = {}
    if live_annotations.get(DESIRED_HASH) == desired_hash(desired, policy.unhashed):
        for compare, patch_path in policy.drift:
            if _get(desired, compare) != _get(live, compare):
                _put(patch, patch_path, copy.deepcopy(_get(desired, patch_path)))
                if patch_path in policy.prune:  # a merge patch keeps keys it does not null
                    _prune(_get(desired, patch_path), _get(live, patch_path), patch_path, patch)
    else:
        patch = copy.deepcopy(merge_diff(with_hash(desired, policy.unhashed), dict(live)) or {})
        for root in policy.prune:
            _prune(_get(desired, root), _get(live, root), root, patch)
    if not patch:
        return None
    return Patch(kind, str(meta.get("namespace", "")), str(meta["name"]), patch)
