"""Performance models of the two pools: step times from a roofline or from measured profiles,
and the per-pool capacities (prefill input tokens/s under the TTFT SLA, decode batch under the
ITL SLA and KV memory) that the planner sizes with."""
