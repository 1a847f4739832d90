"""Where a group's rank actors run: the one thing the embedded and Kubernetes launchers do differently.

A `RankPlacement` turns (group, rank) into the Ray actor options of that rank. The group
controller asks it once per rank every time the group (re)starts; everything else (starting,
registering, probing, draining, restarting) is the same supervisor in both modes.

- `LocalCpuShares` (`moeplane up`): every rank is a CPU share of the local Ray instance.
- `PoolResources` (`moeplane pool`): a rank takes one GPU of the pool's Ray cluster (or a CPU share
  on a CPU pool), wherever Ray finds one.
- `ReplicaPlacement` (`moeplane pool` on KubeRay): one EP group is one KubeRay replica group; group
  g's ranks go to replica g's Ray nodes, rank r to host r // gpusPerNode, by Ray node labels that
  every worker pod derives from KubeRay's replica labels (KubeRay >= 1.6, Ray >= 2.49).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from moeplane.api import podcontract as pc

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
    """A pool's Ray cluster: one GPU per rank (no CPU share, the GPU is the unit), or a CPU share,
    wherever Ray finds one (a Ray cluster not made by KubeRay; see `ReplicaPlacement`)."""

    def actor_options(self, spec: GroupSpec, rank: int) -> dict[str, Any]:
        if spec.rank.device.startswith("cuda"):
            return {"num_cpus": 0, "num_gpus": 1}
        return {"num_cpus": spec.num_cpus_per_rank, "num_gpus": 0}

    def release(self, spec: GroupSpec) -> None:
        return None


@dataclass
class ReplicaPlacement:
    """`moeplane pool` on KubeRay: one EP group is one KubeRay replica group. Group g's ranks go to
    the Ray nodes of replica g (node label `moeplane.io/replica-index`, which every worker pod sets
    from KubeRay's `ray.io/worker-group-replica-index` through `RAY_OVERRIDE_LABELS`; KubeRay >= 1.6,
    Ray >= 2.49), and in a multi-host group rank r to host r // `ranks_per_host` (node label
    `moeplane.io/host-index`, from `ray.io/replica-host-index`), the host grouping hierarchical EPLB
    assumes. So deleting one replica group's pods (a drained scale-down, a rollout) touches no other
    group. Until the pool has seen labelled nodes (`bound`, set by its runner; a Ray cluster not made
    by KubeRay never has them) it places like `PoolResources`."""

    ranks_per_host: int = 1
    hosts_per_group: int = 1
    bound: bool = False

    def actor_options(self, spec: GroupSpec, rank: int) -> dict[str, Any]:
        options = PoolResources().actor_options(spec, rank)
        index = replica_index(spec.group_id)
        if not self.bound or index is None:
            return options
        selector = {pc.NODE_REPLICA_LABEL: str(index)}
        if self.hosts_per_group > 1:
            selector[pc.NODE_HOST_LABEL] = str(rank // max(1, self.ranks_per_host))
        return {**options, "label_selector": selector}

    def release(self, spec: GroupSpec) -> None:
        return None


def replica_index(group_id: str) -> int | None:
    """The replica index a pool's group id ends with (`podcontract.group_id`: `...-g{index}`)."""
    head, sep, tail = group_id.rpartition("-g")
    return int(tail) if sep and head and tail.isdigit() else None
