"""Expert-parallel load balancing (EPLB): placement from load, and the online loop's pieces.

`rebalance` is the pure entry point; `counter`, `store`, `controller`, `moves` and `mover` are the
online loop (count on the ranks, windows in Redis, decide, move weights a few layers per step).
"""

from moeplane.workers.eplb.rebalance import rebalance
from moeplane.workers.eplb.types import EplbError, EplbLayout, EplbPolicy

__all__ = ["EplbError", "EplbLayout", "EplbPolicy", "rebalance"]
