"""Expert parallelism: the EP process group, dispatch/combine, replica choice, grouped GEMM, and
the Ray `EPGroup` (in `moeplane.workers.ep.group`, imported on demand: it pulls in Ray)."""
