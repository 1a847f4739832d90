"""Fuzzed MoEDeployment manifests: validation never crashes. Every input either parses into a
valid object or raises `SpecInvalid` whose every problem names a field path and says what is wrong.

Two generators, each bounded: whole random JSON documents, and the tiny-cpu example with one to
three fields (existing or made up, at any depth) replaced by random JSON values.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moeplane.api.errors import SpecInvalid
from moeplane.api.spec import MoEDeployment, parse_deployment

pytestmark = [pytest.mark.reliability, pytest.mark.unit]

EXAMPLE = yaml.safe_load((Path(__file__).parents[2] / "examples" / "tiny-cpu.yaml").read_text())

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def leaf_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into `obj` (mappings and lists), the root's children first."""
    out: list[tuple] = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for key, value in items:
        out.append((*prefix, key))
        out.extend(leaf_paths(value, (*prefix, key)))
    return out


PATHS = leaf_paths(EXAMPLE)


def check(obj: object) -> None:
    try:
        parsed = parse_deployment(obj)
    except SpecInvalid as err:
        assert err.problems, "SpecInvalid with no problem"
        for p in err.problems:
            assert p.path and p.message.strip(), p
            assert "Traceback" not in p.message
        assert str(err)  # renders without raising
        return
    assert isinstance(parsed, MoEDeployment)
    # A valid object's wire form parses again, to the same wire form.
    wire = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert parse_deployment(wire).model_dump(mode="json", by_alias=True, exclude_none=True) == wire


def test_the_example_itself_is_valid() -> None:
    assert isinstance(parse_deployment(copy.deepcopy(EXAMPLE)), MoEDeployment)


@FUZZ
@given(JSON)
def test_random_documents_never_crash_validation(doc: object) -> None:
    check(doc)


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(PATHS), st.booleans(), st.text(min_size=1, max_size=10), JSON),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_example_never_crashes_validation(edits: list[tuple[tuple, bool, str, object]]) -> None:
    doc = copy.deepcopy(EXAMPLE)
    for path, add_new_key, new_key, value in edits:
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key] if isinstance(parent, dict | list) and _has(parent, key) else None
            if parent is None:
                break
        if parent is None or not _has(parent, path[-1]):
            continue
        if add_new_key and isinstance(parent, dict):
            parent[new_key] = value
        else:
            parent[path[-1]] = value
    check(doc)


def _has(container: Any, key: Any) -> bool:
    if isinstance(container, dict):
        return key in container
    return isinstance(container, list) and isinstance(key, int) and 0 <= key < len(container)
