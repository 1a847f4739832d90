"""Expert-parallel load balancing (EPLB): placement from load, and the online loop's pieces.

`rebalance.rebalance` is the pure entry point; `counter`, `store`, `controller`, `moves` and `mover` are the
online loop's pieces (count on the ranks, windows in Redis, decide, move weights a few layers per
step). `online.PoolBalancer` is its Redis side for one group, and `driver.EplbDriver` runs it
beside a serving group's step loop (the group controller owns one per group).
"""

from moeplane.workers.eplb.types import EplbError, EplbLayout

# `rebalance` (torch) is imported from `moeplane.workers.eplb.rebalance`, not re-exported here, so
# `moeplane --help` and the operator do not load torch.
__all__ = ["EplbError", "EplbLayout"]
