"""The Redis keyspace. Every key is prefixed `moeplane:{namespace}/{deployment}:`.

Redis is a cache and a bus, never the only copy of the user's intent (that lives in the CR).
All components build keys here so the layout has one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

# Fields of the `placement(role)` hash that readers outside the EPLB store use (the operator's status).
PLACEMENT_VERSION_FIELD = "version"
BALANCEDNESS_FIELD = "balancedness"


@dataclass(frozen=True)
class DeploymentKeys:
    namespace: str
    deployment: str

    @property
    def prefix(self) -> str:
        return f"moeplane:{self.namespace}/{self.deployment}:"

    def pattern(self) -> str:
        """A SCAN pattern matching every key of this deployment (used when it is deleted)."""
        return self.prefix + "*"

    def workers(self) -> str:
        """Hash of worker-group id -> JSON registration; liveness lives in `worker_alive`."""
        return self.prefix + "workers"

    def worker_alive(self, group_id: str) -> str:
        """Heartbeat key with a TTL; the group is live while it exists."""
        return self.prefix + f"alive:{group_id}"

    def drain_requests(self) -> str:
        """Hash of group id -> JSON: groups the operator asks their pool to drain and stop
        (scale-down, rollout); the operator removes an entry once the group's pods are gone."""
        return self.prefix + "drain:requests"

    def drained(self) -> str:
        """Hash of group id -> unix time: groups their pool drained and stopped on request, whose
        pods may now be deleted."""
        return self.prefix + "drain:done"

    def worker_epoch(self, group_id: str) -> str:
        """The group's fence: the lowest incarnation the registry still accepts from its writers."""
        return self.prefix + f"epoch:{group_id}"

    def request_metrics(self) -> str:
        """Stream of per-request metrics, capped with MAXLEN."""
        return self.prefix + "requests"

    def expert_load(self, role: str, group_id: str) -> str:
        """Latest sliding-window expert-load counts of one EP group."""
        return self.prefix + f"eplb:load:{role}:{group_id}"

    def placement(self, role: str) -> str:
        """Hash of the current placement: version and the serialized maps, and the measured
        balancedness (fields `PLACEMENT_VERSION_FIELD`, `BALANCEDNESS_FIELD`, ...)."""
        return self.prefix + f"eplb:placement:{role}"

    def planner_decisions(self) -> str:
        """Stream of planner decisions, capped with MAXLEN."""
        return self.prefix + "planner:decisions"
