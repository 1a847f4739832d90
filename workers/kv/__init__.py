"""KV-cache transfer from prefill ranks to decode ranks: the `KVTransport` interface, the gRPC aio
backend (default), the Mooncake transfer-engine backend (optional extra), leases and framing."""
