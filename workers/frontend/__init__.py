"""The OpenAI-compatible frontend: request validation, routing over the registry, Prometheus metrics."""
