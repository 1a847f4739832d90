"""Profiles: measured step-time curves of both pools, their JSON format, loader and interpolation.

`moeplane profile` runs the real engine on a grid and writes this file (and a ConfigMap in the
cluster); `profile_from_models` writes the same format from any step model (the roofline), which
is also how the simulator gets vectorised curves. Format `moeplane.profile/v1`:

    {"format": "moeplane.profile/v1", "model": "deepseek-r1", "hardware": "h800",
     "source": "measured" | "roofline",
     "prefill": {"expert_parallel": 32, "dp_ranks": 32, "nodes_per_group": 4,
                 "kv_tokens_per_rank": 453870,
                 "isl_tokens": [...], "tokens_per_rank": [...],
                 "step_ms": [[...] per isl]},                 # step_ms[i][j]: isl[i], tokens[j]
     "decode":  {"expert_parallel": 144, "dp_ranks": 144, "nodes_per_group": 18,
                 "kv_tokens_per_rank": 708314, "output_tokens_per_step": 1.0,
                 "batch_per_rank": [...], "context_tokens": [...],
                 "step_ms": [[...] per batch]}}               # step_ms[i][j]: batch[i], context[j]

Axes are strictly increasing; between grid points step time is bilinear, beyond the grid it
extends the edge segments linearly (step time grows about linearly in tokens and context).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from moeplane.api.enums import Role
from moeplane.planner.perf.errors import PerfModelError
from moeplane.planner.perf.step_model import DecodeStepModel, PrefillStepModel
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT: Literal["moeplane.profile/v1"] = "moeplane.profile/v1"


def _geometric(lo: int, hi: int) -> tuple[int, ...]:
    """lo, 1.5 lo, 2 lo, 3 lo, 4 lo, ... up to hi: fine enough that bilinear steps stay within ~3%."""
    out, x = [], lo
    while x <= hi:
        out += [x, x * 3 // 2] if x * 3 // 2 <= hi else [x]
        x *= 2
    return tuple(out)


DEFAULT_ISL_AXIS = _geometric(64, 131072)
DEFAULT_TOKENS_AXIS = _geometric(64, 65536)
DEFAULT_BATCH_AXIS = (1, *_geometric(2, 1024))
DEFAULT_CONTEXT_AXIS = (0, *_geometric(256, 131072))


class _Curves(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    expert_parallel: int = Field(gt=0)
    dp_ranks: int = Field(gt=0)
    nodes_per_group: int = Field(gt=0)
    kv_tokens_per_rank: int = Field(ge=0)
    step_ms: list[list[float]]

    def _check_grid(
        self, rows_name: str, rows: Sequence[float], cols_name: str, cols: Sequence[float]
    ) -> None:
        for name, axis in ((rows_name, rows), (cols_name, cols)):
            if len(axis) < 2:
                raise ValueError(f"{name} needs at least 2 points, got {len(axis)}")
            bad = [i for i in range(1, len(axis)) if axis[i] <= axis[i - 1]]
            if bad:
                i = bad[0]
                raise ValueError(
                    f"{name} must increase strictly: [{i - 1}]={axis[i - 1]} then [{i}]={axis[i]}"
                )
        if len(self.step_ms) != len(rows):
            raise ValueError(f"step_ms has {len(self.step_ms)} rows, {rows_name} has {len(rows)} points")
        for i, row in enumerate(self.step_ms):
            if len(row) != len(cols):
                raise ValueError(f"step_ms[{i}] has {len(row)} values, {cols_name} has {len(cols)} points")
            for j, v in enumerate(row):
                if not (math.isfinite(v) and v > 0):
                    raise ValueError(f"step_ms[{i}][{j}] must be a positive number of milliseconds, got {v}")


class PrefillCurves(_Curves):
    isl_tokens: list[float]
    tokens_per_rank: list[float]

    @model_validator(mode="after")
    def _grid(self) -> PrefillCurves:
        self._check_grid("isl_tokens", self.isl_tokens, "tokens_per_rank", self.tokens_per_rank)
        return self


class DecodeCurves(_Curves):
    output_tokens_per_step: float = Field(1.0, ge=1.0)
    batch_per_rank: list[float]
    context_tokens: list[float]

    @model_validator(mode="after")
    def _grid(self) -> DecodeCurves:
        self._check_grid("batch_per_rank", self.batch_per_rank, "context_tokens", self.context_tokens)
        return self


class Profile(BaseModel):
    """The whole profile file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["moeplane.profile/v1"] = FORMAT
    model: str = Field(min_length=1)
    hardware: str = Field(min_length=1)
    source: Literal["measured", "roofline"] = "measured"
    prefill: PrefillCurves
    decode: DecodeCurves


def load_profile(path: str | Path) -> Profile:
    """Read and check a profile file; PerfModelError names the file, the field and the problem."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PerfModelError(f"profile {path}: {err}") from None
    try:
        return Profile.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise PerfModelError(f"profile {path}: {where}: {first['msg']}") from None


def save_profile(profile: Profile, path: str | Path) -> None:
    Path(path).write_text(json.dumps(profile.model_dump(mode="json"), indent=1) + "\n")


def _segments(axis: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment index and position along it (below 0 or above 1 outside the grid)."""
    i = np.clip(np.searchsorted(axis, x, side="right") - 1, 0, len(axis) - 2)
    return i, (x - axis[i]) / (axis[i + 1] - axis[i])


def bilinear(
    rows: np.ndarray, cols: np.ndarray, grid: np.ndarray, r: np.ndarray, c: np.ndarray
) -> np.ndarray:
    """Bilinear interpolation of grid [len(rows), len(cols)] at points (r, c); linear beyond edges.

    Never returns less than the smallest grid value divided by 4 (a step always costs something).
    """
    i, u = _segments(rows, np.asarray(r, dtype=np.float64))
    j, v = _segments(cols, np.asarray(c, dtype=np.float64))
    out = (
        (1 - u) * (1 - v) * grid[i, j]
        + u * (1 - v) * grid[i + 1, j]
        + (1 - u) * v * grid[i, j + 1]
        + u * v * grid[i + 1, j + 1]
    )
    return np.maximum(out, grid.min() / 4)


class ProfiledModel:
    """Step times interpolated from a profile: implements both step-model protocols, plus
    vectorised `*_array` variants that the simulator uses."""

    def __init__(self, profile: Profile, role: Role) -> None:
        self.profile, self._role = profile, role
        self.curves: PrefillCurves | DecodeCurves = (
            profile.prefill if role is Role.PREFILL else profile.decode
        )
        self._grid = np.asarray(self.curves.step_ms, dtype=np.float64) / 1e3
        if isinstance(self.curves, PrefillCurves):
            self._rows = np.asarray(self.curves.isl_tokens, dtype=np.float64)
            self._cols = np.asarray(self.curves.tokens_per_rank, dtype=np.float64)
        else:
            self._rows = np.asarray(self.curves.batch_per_rank, dtype=np.float64)
            self._cols = np.asarray(self.curves.context_tokens, dtype=np.float64)

    @property
    def role(self) -> Role:
        return self._role

    @property
    def dp_ranks(self) -> int:
        return self.curves.dp_ranks

    @property
    def gpus_per_group(self) -> int:
        return self.curves.expert_parallel

    @property
    def nodes_per_group(self) -> int:
        return self.curves.nodes_per_group

    @property
    def kv_tokens_per_rank(self) -> int:
        return self.curves.kv_tokens_per_rank

    @property
    def output_tokens_per_step(self) -> float:
        return self.curves.output_tokens_per_step if isinstance(self.curves, DecodeCurves) else 1.0

    def prefill_step_s_array(self, tokens_per_rank: np.ndarray, isl_tokens: np.ndarray) -> np.ndarray:
        self._expect(Role.PREFILL)
        return bilinear(self._rows, self._cols, self._grid, isl_tokens, tokens_per_rank)

    def decode_step_s_array(self, batch_per_rank: np.ndarray, context_tokens: np.ndarray) -> np.ndarray:
        self._expect(Role.DECODE)
        return bilinear(self._rows, self._cols, self._grid, batch_per_rank, context_tokens)

    def prefill_step_s(self, tokens_per_rank: float, isl_tokens: float) -> float:
        return float(self.prefill_step_s_array(np.asarray(tokens_per_rank), np.asarray(isl_tokens)))

    def decode_step_s(self, batch_per_rank: float, context_tokens: float) -> float:
        return float(self.decode_step_s_array(np.asarray(batch_per_rank), np.asarray(context_tokens)))

    def _expect(self, role: Role) -> None:
        if self._role is not role:
            raise PerfModelError(f"this is the {self._role.value} model; {role.value} steps were asked")


def profile_from_models(
    prefill: PrefillStepModel,
    decode: DecodeStepModel,
    *,
    model: str,
    hardware: str,
    source: Literal["measured", "roofline"] = "roofline",
    isl_axis: Sequence[float] = DEFAULT_ISL_AXIS,
    tokens_axis: Sequence[float] = DEFAULT_TOKENS_AXIS,
    batch_axis: Sequence[float] = DEFAULT_BATCH_AXIS,
    context_axis: Sequence[float] = DEFAULT_CONTEXT_AXIS,
) -> Profile:
    """Sample two step models on a grid into a profile (the roofline's curves, or a cache)."""
    prefill_ms = [[prefill.prefill_step_s(n, isl) * 1e3 for n in tokens_axis] for isl in isl_axis]
    decode_ms = [[decode.decode_step_s(b, ctx) * 1e3 for ctx in context_axis] for b in batch_axis]
    return Profile(
        model=model,
        hardware=hardware,
        source=source,
        prefill=PrefillCurves(
            expert_parallel=prefill.gpus_per_group,
            dp_ranks=prefill.dp_ranks,
            nodes_per_group=prefill.nodes_per_group,
            kv_tokens_per_rank=prefill.kv_tokens_per_rank,
            isl_tokens=list(isl_axis),
            tokens_per_rank=list(tokens_axis),
            step_ms=prefill_ms,
        ),
        decode=DecodeCurves(
            expert_parallel=decode.gpus_per_group,
            dp_ranks=decode.dp_ranks,
            nodes_per_group=decode.nodes_per_group,
            kv_tokens_per_rank=decode.kv_tokens_per_rank,
            output_tokens_per_step=decode.output_tokens_per_step,
            batch_per_rank=list(batch_axis),
            context_tokens=list(context_axis),
            step_ms=decode_ms,
        ),
    )


def profiled_pair(profile: Profile) -> tuple[ProfiledModel, ProfiledModel]:
    """(prefill, decode) models of a profile."""
    return ProfiledModel(profile, Role.PREFILL), ProfiledModel(profile, Role.DECODE)
