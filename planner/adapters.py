"""The planner's edges as Protocols (Dynamo's connector idea): where deployments come from and
how pools are scaled. Two implementations each: Kubernetes (`kube.py`: MoEDeployment and MoEPool
objects through the operator's API client) and the embedded stack (`embedded.py`: the manifest
`moeplane up` runs, and its in-process groups). The replay simulator is the third back end of
the core, through `sim/cluster.py`.

- `DeploymentSource`: a stream of typed `DeploymentEvent`s (every deployment once as a
  `SYNCED` snapshot, then `CHANGED` and `DELETED`), the current object for what-if and Apply,
  and the two writes the planner makes: a spec merge patch (Apply) and the status' last decision.
- `PoolScaler`: a pool's size (groups asked for, groups serving, a rollout under way) and the
  one action, scaling it.

Everything is asynchronous and runs on the service's event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from moeplane.api.enums import Role
from moeplane.api.errors import SpecInvalid
from moeplane.api.spec import MoEDeployment, parse_deployment
from moeplane.api.status import PlannerDecisionStatus
from moeplane.planner.observe import PoolGroups


class EventKind(StrEnum):
    SYNCED = "synced"  # the full set, as of now: anything not in it is gone
    CHANGED = "changed"  # created or updated
    DELETED = "deleted"


class SourceError(RuntimeError):
    """A read or write of a deployment that failed: names the object and why."""


@dataclass(frozen=True)
class DeploymentEvent:
    """One deployment as the source sees it: parsed, or the validation error that refused it."""

    kind: EventKind
    namespace: str
    name: str
    deployment: MoEDeployment | None = None  # None when deleted or invalid
    error: str | None = None  # why the object is not a valid MoEDeployment

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def event_for(kind: EventKind, obj: dict[str, Any]) -> DeploymentEvent:
    """A typed event from a raw object (its validation problems become `error`)."""
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    if kind is EventKind.DELETED:
        return DeploymentEvent(kind, namespace, name)
    try:
        return DeploymentEvent(kind, namespace, name, deployment=parse_deployment(obj))
    except SpecInvalid as exc:
        return DeploymentEvent(kind, namespace, name, error=str(exc))


@runtime_checkable
class DeploymentSource(Protocol):
    """Where the planner's deployments come from, and the two writes it makes to them."""

    # Where Apply lands, in words for the dashboard ("the MoEDeployment", or the embedded spec).
    apply_target: str

    def events(self) -> AsyncIterator[list[DeploymentEvent]]:
        """Batches of events; the first is a `SYNCED` snapshot (possibly empty), and another
        `SYNCED` snapshot follows whenever the source had to start over."""
        ...

    async def get(self, namespace: str, name: str) -> dict[str, Any]:
        """The deployment as stored (wire form); SourceError if it is not there."""
        ...

    async def patch_spec(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of `metadata` and `spec`; returns the updated object."""
        ...

    async def record_decision(self, namespace: str, name: str, decision: PlannerDecisionStatus) -> None:
        """Write `status.lastDecision`."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class PoolScaler(Protocol):
    """The pools of a deployment: their sizes, and scaling them (a shrink drains first)."""

    async def pool_groups(self, namespace: str, deployment: str, role: Role) -> PoolGroups | None:
        """None when the pool does not exist (yet)."""
        ...

    async def scale(self, namespace: str, deployment: str, role: Role, groups: int) -> None: ...
