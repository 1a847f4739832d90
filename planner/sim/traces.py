"""Request traces: arrival times with prompt and output lengths.

Synthetic traces are non-homogeneous Poisson processes: the rate is piecewise constant over
`bin_s` bins (Poisson count per bin, uniform times inside it), so a whole day is generated in a
few vectorised calls. Lengths are lognormal with a mean and coefficient of variation, clipped.
CSV traces have the header `arrival_s,isl,osl`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from moeplane.planner.tick import LoadObservation


class TraceError(ValueError):
    """A trace that cannot be replayed: names the row or parameter and the value."""


@dataclass(frozen=True)
class LengthDist:
    mean_tokens: float
    cv: float = 0.0
    min_tokens: int = 1
    max_tokens: int = 131072

    def __post_init__(self) -> None:
        if self.mean_tokens < 1 or self.cv < 0 or not 1 <= self.min_tokens <= self.max_tokens:
            raise TraceError(
                f"length distribution needs mean >= 1, cv >= 0 and 1 <= min <= max, got mean "
                f"{self.mean_tokens}, cv {self.cv}, min {self.min_tokens}, max {self.max_tokens}"
            )

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.cv == 0:
            values = np.full(n, self.mean_tokens)
        else:
            sigma2 = math.log1p(self.cv**2)
            values = rng.lognormal(math.log(self.mean_tokens) - sigma2 / 2, math.sqrt(sigma2), n)
        return np.clip(np.rint(values), self.min_tokens, self.max_tokens).astype(np.int64)


@dataclass(frozen=True, eq=False)
class Trace:
    """Requests sorted by arrival. Arrays are read-only views."""

    name: str
    arrival_s: np.ndarray  # [N] float64, non-decreasing
    isl_tokens: np.ndarray  # [N] int64 >= 1
    osl_tokens: np.ndarray  # [N] int64 >= 1
    duration_s: float
    description: str = field(default="")
    # [N] int64: leading prompt tokens whose KV is already cached (prefix reuse); None: no reuse.
    cached_tokens: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if self.cached_tokens is None:
            object.__setattr__(self, "cached_tokens", np.zeros(n, dtype=np.int64))
        if len(self.isl_tokens) != n or len(self.osl_tokens) != n or len(self.cached) != n:
            raise TraceError(f"trace {self.name}: arrival_s, isl, osl and cached_tokens lengths differ")
        if n and (np.any(self.cached < 0) or np.any(self.cached >= self.isl_tokens)):
            raise TraceError(f"trace {self.name}: cached_tokens must be in [0, isl)")
        if n and (np.any(np.diff(self.arrival_s) < 0) or self.arrival_s[0] < 0):
            raise TraceError(f"trace {self.name}: arrival_s must be non-negative and sorted")
        if n and (self.isl_tokens.min() < 1 or self.osl_tokens.min() < 1):
            raise TraceError(f"trace {self.name}: isl and osl must be >= 1")
        if n and self.arrival_s[-1] > self.duration_s:
            raise TraceError(
                f"trace {self.name}: arrival {self.arrival_s[-1]} after duration {self.duration_s}"
            )
        for arr in (self.arrival_s, self.isl_tokens, self.osl_tokens, self.cached):
            arr.setflags(write=False)

    @property
    def cached(self) -> np.ndarray:
        """[N] int64 cached prompt tokens (zeros without prefix reuse)."""
        assert self.cached_tokens is not None  # set in __post_init__
        return self.cached_tokens

    @property
    def requests(self) -> int:
        return len(self.arrival_s)

    def between(self, t0: float, t1: float) -> slice:
        """Indices of requests arriving in [t0, t1)."""
        lo, hi = np.searchsorted(self.arrival_s, [t0, t1], side="left")
        return slice(int(lo), int(hi))

    def load_between(self, t0: float, t1: float, peak_window_s: float) -> LoadObservation:
        """The load of [t0, t1) as the planner would observe it."""
        sl = self.between(t0, t1)
        span = max(t1 - t0, 1e-9)
        n = sl.stop - sl.start
        if n == 0:
            return LoadObservation(0.0, 0.0, 0.0, 0.0, 0.0)
        isl = self.isl_tokens[sl]
        bins = max(1, round(span / peak_window_s))
        counts, _ = np.histogram(self.arrival_s[sl], bins=bins, range=(t0, t1))
        osl = self.osl_tokens[sl]
        mean_isl, mean_osl = float(isl.mean()), float(osl.mean())
        cached = float(self.cached[sl].sum()) / float(isl.sum())
        return LoadObservation(
            arrival_rate_per_s=n / span,
            isl_tokens_mean=mean_isl,
            osl_tokens_mean=mean_osl,
            isl_tokens_cv=float(isl.std() / mean_isl) if n > 1 else 0.0,
            osl_tokens_cv=float(osl.std() / mean_osl) if n > 1 else 0.0,
            peak_arrival_rate_per_s=float(counts.max()) / (span / bins),
            cached_fraction=cached,
        )

    def interval_loads(self, interval_s: float, peak_window_s: float) -> list[LoadObservation]:
        steps = math.ceil(self.duration_s / interval_s)
        return [self.load_between(i * interval_s, (i + 1) * interval_s, peak_window_s) for i in range(steps)]


def trace_from_rates(
    name: str,
    rates_per_s: np.ndarray,
    bin_s: float,
    isl: LengthDist,
    osl: LengthDist,
    seed: int,
    description: str = "",
) -> Trace:
    """A Poisson trace whose rate is `rates_per_s[i]` over bin i of `bin_s` seconds."""
    rates = np.asarray(rates_per_s, dtype=np.float64)
    if bin_s <= 0 or rates.ndim != 1 or np.any(rates < 0) or not np.all(np.isfinite(rates)):
        raise TraceError(
            f"trace {name}: rates must be finite, non-negative, 1-D; bin_s positive (got {bin_s})"
        )
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rates * bin_s)
    starts = np.repeat(np.arange(len(rates)) * bin_s, counts)
    arrivals = np.sort(starts + rng.uniform(0, bin_s, len(starts)))
    n = len(arrivals)
    return Trace(name, arrivals, isl.sample(rng, n), osl.sample(rng, n), len(rates) * bin_s, description)


def poisson_trace(
    rate_per_s: float, duration_s: float, isl: LengthDist, osl: LengthDist, seed: int = 0
) -> Trace:
    bins = max(1, math.ceil(duration_s))
    return trace_from_rates(
        "poisson",
        np.full(bins, rate_per_s),
        duration_s / bins,
        isl,
        osl,
        seed,
        f"Poisson at {rate_per_s:g} req/s",
    )


def bursty_trace(
    base_rate_per_s: float,
    burst_rate_per_s: float,
    mean_on_s: float,
    mean_off_s: float,
    duration_s: float,
    isl: LengthDist,
    osl: LengthDist,
    seed: int = 0,
) -> Trace:
    """On/off (two-state Markov-modulated Poisson): bursts at `burst_rate_per_s` lasting on average
    `mean_on_s`, separated by quiet spells at `base_rate_per_s` lasting on average `mean_off_s`."""
    if mean_on_s <= 0 or mean_off_s <= 0:
        raise TraceError(
            f"bursty trace needs positive mean_on_s and mean_off_s, got {mean_on_s}, {mean_off_s}"
        )
    rng = np.random.default_rng(seed + 1_000_003)
    bins = max(1, math.ceil(duration_s))
    rates = np.empty(bins)
    t, on = 0, False
    while t < bins:
        length = max(1, round(rng.exponential(mean_on_s if on else mean_off_s)))
        rates[t : t + length] = burst_rate_per_s if on else base_rate_per_s
        t, on = t + length, not on
    return trace_from_rates(
        "bursty",
        rates,
        duration_s / bins,
        isl,
        osl,
        seed,
        f"on/off {base_rate_per_s:g}/{burst_rate_per_s:g} req/s, on {mean_on_s:g}s off {mean_off_s:g}s",
    )


def diurnal_trace(
    mean_rate_per_s: float,
    amplitude: float,
    period_s: float,
    duration_s: float,
    isl: LengthDist,
    osl: LengthDist,
    seed: int = 0,
    phase: float = -math.pi / 2,
) -> Trace:
    """Rate `mean × (1 + amplitude × sin(2π t / period + phase))`: starts at the trough by default."""
    if not 0 <= amplitude < 1:
        raise TraceError(f"diurnal amplitude must be in [0, 1), got {amplitude}")
    bins = max(1, math.ceil(duration_s))
    t = (np.arange(bins) + 0.5) * (duration_s / bins)
    rates = mean_rate_per_s * (1 + amplitude * np.sin(2 * math.pi * t / period_s + phase))
    return trace_from_rates(
        "diurnal",
        rates,
        duration_s / bins,
        isl,
        osl,
        seed,
        f"diurnal mean {mean_rate_per_s:g} req/s ±{amplitude:.0%}, period {period_s:g}s",
    )


def load_csv_trace(path: str | Path, name: str | None = None) -> Trace:
    """Read `arrival_s,isl,osl` rows (any order; sorted here)."""
    arrivals, isls, osls = [], [], []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"arrival_s", "isl", "osl"} - set(reader.fieldnames or ())
        if missing:
            raise TraceError(f"{path}: header lacks {sorted(missing)} (need arrival_s,isl,osl)")
        for row_no, row in enumerate(reader, start=2):
            try:
                a, i, o = float(row["arrival_s"]), int(row["isl"]), int(row["osl"])
            except (TypeError, ValueError):
                raise TraceError(f"{path}:{row_no}: cannot parse {row}") from None
            if not math.isfinite(a) or a < 0 or i < 1 or o < 1:
                raise TraceError(
                    f"{path}:{row_no}: need arrival_s >= 0, isl >= 1, osl >= 1, got {a}, {i}, {o}"
                )
            arrivals.append(a)
            isls.append(i)
            osls.append(o)
    order = np.argsort(np.asarray(arrivals, dtype=np.float64), kind="stable")
    arr = np.asarray(arrivals, dtype=np.float64)[order]
    return Trace(
        name or Path(path).stem,
        arr,
        np.asarray(isls, dtype=np.int64)[order],
        np.asarray(osls, dtype=np.int64)[order],
        float(math.ceil(arr[-1] + 1e-9)) if len(arr) else 0.0,
        f"CSV {Path(path).name}",
    )


def save_csv_trace(trace: Trace, path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["arrival_s", "isl", "osl"])
        for a, i, o in zip(
            trace.arrival_s.tolist(), trace.isl_tokens.tolist(), trace.osl_tokens.tolist(), strict=True
        ):
            writer.writerow([f"{a:.6f}", i, o])
