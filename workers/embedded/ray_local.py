"""A private local Ray instance whose every process listens on 127.0.0.1 only (`moeplane up`).

Asked for node IP 127.0.0.1, `ray.init` substitutes the machine's routable address, and Ray's
GCS, raylet, workers and agents then listen on every interface. Ray keeps everything on loopback
only in its single-machine mode (`ENABLE_RAY_CLUSTER` off, its default on macOS and Windows),
which the driver reads once, when it picks the node IP: it is switched off for that call only.
The node IP then travels to every process Ray starts. `tests/workers/embedded/test_up_demo_cli.py`
checks the listening sockets of the whole process tree, so a Ray release that changes this fails
there rather than silently listening beyond loopback.
"""

from __future__ import annotations

import ray
import ray._private.ray_constants as ray_constants

LOOPBACK = "127.0.0.1"


def init_local_ray(num_cpus: int | None = None) -> None:
    """`ray.init` of a new private instance (never someone else's cluster), loopback only."""
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            address="local", num_cpus=num_cpus, include_dashboard=False, dashboard_host=LOOPBACK,
            log_to_driver=False, configure_logging=False,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:
        ray.shutdown()
        raise RuntimeError(
            f"local Ray took node IP {node_ip}, not {LOOPBACK}: it would listen beyond loopback"
        )
