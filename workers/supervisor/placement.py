"""Where a group's rank actors run: the one thing the embedded and Kubernetes launchers do differently.

A `RankPlacement` turns (group, rank) into the Ray actor options of that rank. The group
controller asks it once per rank every time the group (re)starts; everything else (starting,
registering, probing, draining, restarting) is the same supervisor in both modes.

- `LocalCpuShares` (`moeplane up`): every rank is a CPU share of the local Ray instance.
- `PoolResources` (`moeplane pool`): a rank takes one GPU of the pool's Ray cluster (or a CPU share
  on a CPU pool), wherever Ray finds one.

Kubernetes seam, not bound yet: one EP group is one KubeRay replica group (DESIGN.md), so group g's
ranks belong on replica g's hosts, rank r on host r // gpusPerNode. A later change makes
`PoolResources` (or a sibling) reserve, per group, a Ray placement group with one bundle per rank
whose bundles carry a label selector for replica g's pods (`ray.io/replicaIndex` or a custom
resource the RayCluster builder gives each replica), and return
`scheduling_strategy=PlacementGroupSchedulingStrategy(pg, bundle_index=rank)` here; `release`
removes the placement group when the group stops or restarts. Until then Ray places ranks by
resources alone, which is correct for one group per cluster and for CPU pools.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from moeplane.workers.serving.controller import GroupSpec


class RankPlacement(Protocol):
    """Ray actor options for each rank of a group (see the module docstring)."""

    def actor_options(self, spec: GroupSpec, rank: int) -> dict[str, Any]:
        """Options for `ray.remote(...).options(**options)` of rank `rank` of `spec`'s group."""
        ...

    def release(self, spec: GroupSpec) -> None:
        """The group's ranks are gone: free what `actor_options` reserved for them."""
        ...


def loopback_interface() -> str:
    """The name of this machine's loopback interface (`lo` on Linux, `lo0` on macOS)."""
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n in ("lo", "lo0")), names[0] if names else "lo")


@dataclass(frozen=True)
class LocalCpuShares:
    """Embedded mode: each rank takes `spec.num_cpus_per_rank` CPUs of the local Ray instance, and
    its gloo process group uses the loopback interface only (`GLOO_SOCKET_IFNAME`; by default gloo
    listens on whatever address the hostname resolves to)."""

    def actor_options(self, spec: GroupSpec, rank: int) -> dict[str, Any]:
        env = {"GLOO_SOCKET_IFNAME": loopback_interface()}
        return {"num_cpus": spec.num_cpus_per_rank, "num_gpus": 0, "runtime_env": {"env_vars": env}}

    def release(self, spec: GroupSpec) -> None:
        return None


@dataclass(frozen=True)
class PoolResources:
    """A pool's Ray cluster: one GPU per rank (no CPU share, the GPU is the unit), or a CPU share.

    The binding of group g to KubeRay replica g goes here (module docstring)."""

    def actor_options(self, spec: GroupSpec, rank: int) -> dict[str, Any]:
        if spec.rank.device.startswith("cuda"):
            return {"num_cpus": 0, "num_gpus": 1}
        return {"num_cpus": spec.num_cpus_per_rank, "num_gpus": 0}

    def release(self, spec: GroupSpec) -> None:
        return None
