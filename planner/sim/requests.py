"""Per-request state of a replay: one array per field, indexed like the trace."""

from __future__ import annotations

import numpy as np
from moeplane.planner.sim.traces import Trace

PENDING, DONE, FAILED = 0, 1, 2


class RequestBook:
    """status (PENDING, DONE, FAILED), first-token and finish times of every request."""

    def __init__(self, trace: Trace) -> None:
        n = trace.requests
        self.trace = trace
        self.arrival_s = trace.arrival_s
        self.isl = trace.isl_tokens.astype(np.float64)
        self.osl = trace.osl_tokens.astype(np.float64)
        self.status = np.zeros(n, dtype=np.int8)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)

    def fail(self, idx: np.ndarray) -> None:
        self.status[idx] = FAILED

    def finish(self, idx: np.ndarray, at_s: np.ndarray) -> None:
        self.finish_s[idx] = at_s
        self.status[idx] = DONE

    def unresolved(self) -> int:
        return int(np.sum(self.status == PENDING))
