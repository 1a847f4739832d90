"""Expert parallelism: the EP process group, dispatch/combine, replica choice and grouped GEMM.

Serving runs an EP group as Ray rank actors under a group controller (`moeplane.workers.serving`);
`launch` runs one function per rank in spawned processes for tests and benchmarks."""
