"""Expert load over a chosen span, for the dashboard's heatmap.

The ranks publish sliding windows of their token counts (seconds long) to Redis, so the load
right now is often empty: a quiet minute leaves the heatmap blank however busy the hour was.
The planner samples each pool's summed window at most every `sample_s` and keeps the samples of
the last `keep_s`; the heatmap shows their mean over the span the user picks, with how many
samples carried load. Samples overlap (the windows slide), which is why they are averaged, never
summed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from moeplane.api.enums import Role

SAMPLE_S = 10.0
KEEP_S = 6 * 3600.0


@dataclass(frozen=True)
class Sample:
    at_s: float
    load: np.ndarray  # [layers, experts] int64 token choices in the window sampled


class ExpertLoadHistory:
    """Samples of each pool's expert load (in memory; a restarted planner starts a new history)."""

    def __init__(self, sample_s: float = SAMPLE_S, keep_s: float = KEEP_S) -> None:
        self.sample_s, self.keep_s = sample_s, keep_s
        self._samples: dict[Role, deque[Sample]] = {role: deque() for role in Role}

    def add(self, role: Role, load: np.ndarray | None, now_s: float) -> None:
        """Record the pool's current window (None or all zeros count as an idle sample)."""
        samples = self._samples[role]
        if samples and now_s - samples[-1].at_s < self.sample_s:
            return
        if load is None:
            if not samples:
                return
            load = np.zeros_like(samples[-1].load)
        samples.append(Sample(now_s, np.asarray(load, dtype=np.int64)))
        while samples and now_s - samples[0].at_s > self.keep_s:
            samples.popleft()

    def view(self, role: Role, span_s: float, now_s: float) -> dict[str, Any]:
        """Mean load per expert over the last `span_s`, with the samples behind it."""
        inside = [s for s in self._samples[role] if now_s - s.at_s <= span_s]
        shapes = {s.load.shape for s in inside}
        if len(shapes) > 1:  # the layout changed: only the current shape
            inside = [s for s in inside if s.load.shape == inside[-1].load.shape]
        busy = [s for s in inside if s.load.any()]
        mean = np.mean([s.load for s in inside], axis=0) if inside else None
        return {
            "spanSeconds": span_s,
            "samples": len(inside),
            "busySamples": len(busy),
            "firstAtSeconds": inside[0].at_s if inside else None,
            "load": None if mean is None or not busy else np.round(mean, 2).tolist(),
        }
