"""The Redis worker registry (TTL heartbeats) and the per-request metrics stream."""
