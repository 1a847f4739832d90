"""A lower bound on the GPU-hours of any policy that meets the SLA for a share of the requests
over a whole trace (the bench's grade), from the oracle's requirement sweeps (`oracle.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from moeplane.planner.sim.oracle import Requirements


def _with_one_group(lo: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, index into the sweep's axis): the swept sizes lo .. lo + n - 1 and, below a sweep
    that did not reach 1, one group credited with what `lo` met (never fewer than it could)."""
    sizes, index = np.arange(lo, lo + n), np.arange(n)
    if lo > 1:
        sizes, index = np.concatenate([[1], sizes]), np.concatenate([[0], index])
    return sizes, index


def trace_floor(req: Requirements, hours: np.ndarray, gpus: tuple[int, int], threshold: float) -> float:
    """A lower bound on the GPU-hours of any schedule under which `threshold` of the scored
    requests meet the SLA over the whole trace, where misses in one interval may be traded for
    margin in another (the bar the bench grades policies by; the oracle's schedule meets it in
    every interval, which costs more).

    The relaxation: each interval k pays `hours[k]` for the sizes it holds, with no start-up or
    drain, and meets `req.met[k, p, d]` requests (credited as generously as the sweeps allow). Its
    Lagrangian dual, max over λ >= 0 of Σ_k min_(p,d) (cost_k(p,d) − λ met_k(p,d)) + λ × target,
    bounds the relaxation's integer optimum from below at every λ; bisection on the subgradient
    finds the best λ.
    """
    steps, n_p, n_d = req.met.shape
    if steps == 0 or req.scored == 0:
        return 0.0
    p_sizes, p_index = _with_one_group(req.swept_prefill[0], n_p)
    d_sizes, d_index = _with_one_group(req.swept_decode[0], n_d)
    met = req.met[:, p_index][:, :, d_index].astype(np.float64)  # [T, P', D']
    gpus_pair = p_sizes[:, None] * gpus[0] + d_sizes[None, :] * gpus[1]  # [P', D']
    cost = hours[:, None, None] * gpus_pair[None, :, :]  # [T, P', D']
    target = threshold * req.scored

    def dual(lam: float) -> tuple[float, float]:
        value = (cost - lam * met).reshape(steps, -1)
        pick = np.argmin(value, axis=1)
        rows = np.arange(steps)
        chosen_met = float(met.reshape(steps, -1)[rows, pick].sum())
        return float(value[rows, pick].sum() + lam * target), chosen_met

    best, lo, hi = 0.0, 0.0, float(cost.max()) * 2.0 + 1.0
    for _ in range(100):
        lam = (lo + hi) / 2
        value, chosen_met = dual(lam)
        best = max(best, value)
        if chosen_met >= target:
            hi = lam
        else:
            lo = lam
    return max(best, dual(hi)[0])
