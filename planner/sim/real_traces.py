"""Real production traces (`shared/traces/`): readers for their two formats and a rate scaler.

- Mooncake (`*.jsonl`): one JSON object a line, `timestamp` (ms since start), `input_length`,
  `output_length`, `hash_ids` (prefix blocks of 512 tokens; an equal id is reusable KV).
- Azure LLM inference (`*.csv`): `TIMESTAMP,ContextTokens,GeneratedTokens`, timestamps as
  `YYYY-MM-DD HH:MM:SS.fffffff`.

Mooncake's hashes give each request its cached prefix: the leading blocks some earlier request
already computed, with a prefix store that keeps every block for the hour (Mooncake's global KV
store) and at least one prompt token left to compute. The prefill pool skips cached tokens.

`scale_rate` brings a trace to the load of the cluster being studied while keeping its shape. A
cluster `x` times busier serves `x` times more users, not the same users `x` times in lockstep:
the trace is copied `x` times (the fraction by thinning one copy), each copy shifted in time by
its own offset within ±`shift_s` (wrapping around the end). The rate curve and the length mix
over spans longer than the shift stay as recorded, each copy keeps its own bursts and sessions,
and bursts shorter than the shift overlap across copies as independent users' would.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
from moeplane.planner.sim.traces import Trace, TraceError

MOONCAKE_BLOCK_TOKENS = 512
DEFAULT_SHIFT_S = 300.0


def load_trace(path: str | Path, name: str | None = None) -> Trace:
    """A Mooncake `.jsonl` or an Azure `.csv` (detected by content), or moeplane's own CSV."""
    path = Path(path)
    try:
        with open(path) as fh:
            first = fh.readline().strip()
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    if first.startswith("{"):
        return load_mooncake(path, name)
    if first.replace(" ", "").upper().startswith("TIMESTAMP,"):
        return load_azure(path, name)
    if first.startswith("arrival_s"):
        from moeplane.planner.sim.traces import load_csv_trace

        return load_csv_trace(path, name)
    raise TraceError(
        f"{path}: not a trace format moeplane reads (Mooncake JSON lines, Azure CSV with TIMESTAMP, "
        f"or arrival_s,isl,osl); first line {first[:80]!r}"
    )


def _trace(
    name: str, path: Path, arrival: list[float], isl: list[int], osl: list[int], cached: list[int], what: str
) -> Trace:
    if not arrival:
        raise TraceError(f"{path}: no requests")
    a = np.asarray(arrival, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    a = a[order] - a[order][0]
    return Trace(
        name,
        a,
        np.asarray(isl, dtype=np.int64)[order],
        np.asarray(osl, dtype=np.int64)[order],
        float(math.ceil(a[-1] + 1e-9)),
        what,
        cached_tokens=np.asarray(cached, dtype=np.int64)[order],
    )


def load_mooncake(path: str | Path, name: str | None = None) -> Trace:
    """Mooncake JSON lines, with each request's cached prefix from its `hash_ids`."""
    path = Path(path)
    arrival: list[float] = []
    isl: list[int] = []
    osl: list[int] = []
    cached: list[int] = []
    stored: set[int] = set()
    with open(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                at_ms, i, o = float(row["timestamp"]), int(row["input_length"]), int(row["output_length"])
                hashes = [int(h) for h in row.get("hash_ids", [])]
            except (ValueError, KeyError, TypeError) as exc:
                raise TraceError(
                    f"{path}:{line_no}: not a Mooncake request ({exc}): {line[:120]!r}"
                ) from None
            if not math.isfinite(at_ms) or at_ms < 0 or i < 1 or o < 0:
                raise TraceError(
                    f"{path}:{line_no}: need timestamp >= 0, input_length >= 1, output_length >= 0, "
                    f"got {at_ms}, {i}, {o}"
                )
            hit = 0
            for h in hashes:
                if h not in stored:
                    break
                hit += 1
            stored.update(hashes)
            arrival.append(at_ms / 1e3)
            isl.append(i)
            osl.append(max(1, o))
            cached.append(min(hit * MOONCAKE_BLOCK_TOKENS, i - 1))
    return _trace(name or path.stem, path, arrival, isl, osl, cached, f"Mooncake trace {path.name}")


def _azure_time_s(text: str) -> float:
    """`2023-11-16 18:17:03.9799600` -> Unix seconds (fractions beyond microseconds kept)."""
    whole, _, frac = text.strip().partition(".")
    base = datetime.fromisoformat(whole).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def load_azure(path: str | Path, name: str | None = None) -> Trace:
    """Azure LLM inference CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`); no prefix reuse."""
    path = Path(path)
    arrival: list[float] = []
    isl: list[int] = []
    osl: list[int] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = {f.strip() for f in reader.fieldnames or ()}
        missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - fields
        if missing:
            raise TraceError(f"{path}: header lacks {sorted(missing)}")
        for row_no, row in enumerate(reader, start=2):
            try:
                at = _azure_time_s(row["TIMESTAMP"])
                i, o = int(row["ContextTokens"]), int(row["GeneratedTokens"])
            except (ValueError, TypeError) as exc:
                raise TraceError(f"{path}:{row_no}: cannot parse {row} ({exc})") from None
            if i < 1 or o < 0:
                raise TraceError(f"{path}:{row_no}: need ContextTokens >= 1 and GeneratedTokens >= 0")
            arrival.append(at)
            isl.append(i)
            osl.append(max(1, o))
    return _trace(name or path.stem, path, arrival, isl, osl, [0] * len(isl), f"Azure trace {path.name}")


def scale_rate(
    trace: Trace, factor: float, *, seed: int = 0, shift_s: float = DEFAULT_SHIFT_S, name: str | None = None
) -> Trace:
    """The trace at `factor` times its request rate, same duration and shape (see module doc).

    The trace is copied `floor(factor)` times, plus one copy thinned to the fraction; each copy
    is shifted in time by its own offset, spread evenly over [-shift_s, shift_s] (wrapping
    around the end), as another population of users behaving alike but not in lockstep."""
    if not (math.isfinite(factor) and factor > 0) or shift_s < 0:
        raise TraceError(f"rate scale must be a positive number and shift >= 0, got {factor}, {shift_s}")
    rng = np.random.default_rng(seed)
    n, whole = trace.requests, int(factor)
    copies = whole + (1 if factor > whole else 0)
    offsets = np.linspace(-shift_s, shift_s, copies) if copies > 1 else np.zeros(1)
    rng.shuffle(offsets)
    arrivals, sources = [], []
    for c in range(copies):
        keep = np.arange(n) if c < whole else np.flatnonzero(rng.random(n) < factor - whole)
        arrivals.append(np.mod(trace.arrival_s[keep] + offsets[c], trace.duration_s))
        sources.append(keep)
    arrival = np.concatenate(arrivals)
    src = np.concatenate(sources)
    order = np.argsort(arrival, kind="stable")
    src = src[order]
    return Trace(
        name or trace.name,
        arrival[order],
        trace.isl_tokens[src],
        trace.osl_tokens[src],
        trace.duration_s,
        f"{trace.description} at {factor:g}x its rate (copies shifted by up to {shift_s:g}s)",
        cached_tokens=trace.cached[src],
    )


def mean_rate_per_s(trace: Trace) -> float:
    return trace.requests / trace.duration_s if trace.duration_s else 0.0
