"""SLA planner: observe, predict, size and scale the prefill and decode pools; dashboard."""
