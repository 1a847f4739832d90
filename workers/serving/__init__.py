"""Serving: scheduler, paged KV block manager, sampling, per-rank prefill/decode engines, the Ray
rank actors and the group controller that hosts the worker control gRPC service."""
