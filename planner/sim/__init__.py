"""Discrete-event replay of a prefill/decode cluster, driven by the planner's own performance
model and core: traces, the cluster mechanics, the policies compared and their reports."""
