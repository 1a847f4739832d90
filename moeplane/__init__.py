"""moeplane: serve giant mixture-of-experts models with disaggregated prefill/decode pools,
wide expert parallelism, expert load balancing and an SLA planner."""

__version__ = "0.1.0"
