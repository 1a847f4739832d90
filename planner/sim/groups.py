"""The group table of one simulated pool: when each EP group was asked for, became ready,
began draining and left (GPU time runs from request to removal)."""

from __future__ import annotations

import numpy as np


class GroupTable:
    def __init__(self) -> None:
        self.requested_s = np.empty(0)
        self.ready_s = np.empty(0)
        self.draining = np.empty(0, dtype=bool)
        self.removed_s = np.empty(0)

    def __len__(self) -> int:
        return len(self.ready_s)

    def add(self, at_s: float, ready_s: float) -> int:
        self.requested_s = np.append(self.requested_s, at_s)
        self.ready_s = np.append(self.ready_s, ready_s)
        self.draining = np.append(self.draining, False)
        self.removed_s = np.append(self.removed_s, np.nan)
        return len(self.ready_s) - 1

    def alive(self) -> np.ndarray:
        return np.isnan(self.removed_s)

    def serving(self, t: float) -> np.ndarray:
        """[groups] bool: groups taking new work at time t."""
        return self.alive() & ~self.draining & (self.ready_s <= t)

    def counts(self, t: float) -> tuple[int, int]:
        """(ready, starting) among groups not draining."""
        live = self.alive() & ~self.draining
        return int(np.sum(live & (self.ready_s <= t))), int(np.sum(live & (self.ready_s > t)))

    def scale_to(self, target: int, t: float, startup_s: float, load: np.ndarray) -> None:
        """Grow (un-draining first) or shrink (cancelling starting groups first, then draining
        the least loaded by `load`) to `target` groups that are not draining."""
        live = self.alive() & ~self.draining
        current = int(live.sum())
        while current < target:
            draining = np.flatnonzero(self.alive() & self.draining)
            if len(draining):
                self.draining[draining[-1]] = False
            else:
                self.add(t, t + startup_s)
            current += 1
        if current > target:
            for g in np.flatnonzero(live & (self.ready_s > t))[::-1][: current - target]:
                self.removed_s[g] = t  # never served: cancelled outright
                current -= 1
            ready = np.flatnonzero(self.alive() & ~self.draining)
            for g in ready[np.argsort(load[ready], kind="stable")][: max(0, current - target)]:
                self.draining[g] = True

    def gpu_seconds(self, gpus_per_group: int, start_s: float, end_s: float) -> float:
        """GPU-seconds held within [start_s, end_s], from request to removal."""
        end = np.where(np.isnan(self.removed_s), end_s, np.minimum(self.removed_s, end_s))
        begin = np.maximum(self.requested_s, start_s)
        return float(np.sum(np.maximum(0.0, end - begin))) * gpus_per_group
