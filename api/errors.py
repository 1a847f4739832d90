"""Domain errors of the API: a spec that cannot work, with every problem it has."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One problem with a manifest: the field path (`spec.decode.expertParallel`) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecInvalid(ValueError):
    """A manifest that can never work. Carries all its problems, not just the first.

    Edges translate it: the CLI prints each problem and exits 1, the operator sets the Invalid
    condition (kopf PermanentError), HTTP answers 400.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("SpecInvalid needs at least one problem")
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def messages(self) -> list[str]:
        return [str(p) for p in self.problems]


def field_path(loc: Sequence[int | str]) -> str:
    """`('spec', 'prefill', 'tolerations', 0)` -> `spec.prefill.tolerations[0]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def _num(value: object) -> str:
    """`0.0` -> `0`, `0.5` -> `0.5`: bounds read as the user wrote them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _got(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_BOUNDS = {
    "greater_than": ("greater than", "gt"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("less than", "lt"),
    "less_than_equal": ("at most", "le"),
}


def pydantic_problem(error: Any) -> Problem:
    """One pydantic error (an `ErrorDetails` dict) as a Problem with a readable message."""
    kind: str = error.get("type", "")
    ctx: dict = error.get("ctx") or {}
    loc = tuple(part for part in error.get("loc", ()) if not str(part).startswith("function-"))
    value = error.get("input")
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "is not a known field"
    elif kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        message = f"must be {words} {_num(ctx.get(key))} (got {_got(value)})"
    elif kind in ("enum", "literal_error"):
        message = f"must be one of {ctx.get('expected')} (got {_got(value)})"
    elif kind == "string_too_short":
        message = "must not be empty"
    elif kind == "value_error":
        message = str(ctx.get("error", error.get("msg", "")))
    else:
        message = f"{str(error.get('msg', 'is invalid')).lower()} (got {_got(value)})"
    return Problem(field_path(loc), message)
