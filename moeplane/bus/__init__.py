"""The Redis contracts between moeplane's processes, torch-free.

Redis is a cache and a bus, never the only copy of the user's intent (that lives in the CR). Every
reader and writer takes its keys and record schemas from here: the workers write the registry,
the request-metrics stream and the EPLB keys; the frontend, the operator, the planner and its
dashboard read them. Nothing here imports torch or `moeplane.workers`, so the planner and the
dashboard stay light.

- `keys`: the keyspace (`moeplane:{namespace}/{deployment}:...`);
- `registry`: the worker-group registry (`WorkerGroup`, `GroupState`, `WorkerRegistry`);
- `request_metrics`: the per-request metrics stream (`RequestRecord`);
- `eplb`: placement versions, measured balancedness and expert-load windows (`PoolEplbStatus`);
- `redis_client`: the asyncio client with bounded timeouts.
"""
