"""The embedded back end of the planner's adapters: `moeplane up` has no cluster, so the planner
keeps the one MoEDeployment it plans in memory and scales the stack's pools in this process.

- `EmbeddedDeployments` (`DeploymentSource`): the manifest the stack runs, as one deployment.
  The dashboard's Apply merge-patches it (and bumps its generation), which the service receives
  as a `CHANGED` event and plans with from the next tick; there is no CR to write.
- `EmbeddedPools` (`PoolScaler`): the stack's pool sizes, and resizing them (a shrink drains a
  group's requests before stopping it; scaling returns once the new size is recorded).

Everything runs on the stack's event loop; nothing here pretends to be an API server.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from moeplane.api.enums import Role
from moeplane.api.spec import parse_deployment
from moeplane.api.status import PlannerDecisionStatus
from moeplane.planner.adapters import DeploymentEvent, EventKind, SourceError, event_for
from moeplane.planner.observe import PoolGroups

log = logging.getLogger(__name__)

APPLY_TARGET = "the embedded stack's in-memory spec (embedded mode has no MoEDeployment CR)"


class Stack(Protocol):
    """What the planner needs of `moeplane.workers.embedded.stack.EmbeddedStack`."""

    def pool_groups(self, role: Role) -> tuple[int, int]: ...

    def request_scale(self, role: Role, groups: int) -> asyncio.Task[None]: ...


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, None deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class EmbeddedDeployments:
    """The manifest `moeplane up` runs, as a `DeploymentSource` of one deployment."""

    apply_target = APPLY_TARGET

    def __init__(self, manifest: dict[str, Any]) -> None:
        obj = copy.deepcopy(manifest)
        parse_deployment(obj)  # a manifest the stack runs is valid already; fail early if not
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta["generation"] = 1
        self.namespace, self.name = str(meta["namespace"]), str(meta["name"])
        self._obj = obj
        self._changes: asyncio.Queue[list[DeploymentEvent]] = asyncio.Queue()

    def _check(self, namespace: str, name: str) -> None:
        if (namespace, name) != (self.namespace, self.name):
            raise SourceError(
                f"MoEDeployment {namespace}/{name} not found: the embedded stack runs only "
                f"{self.namespace}/{self.name}"
            )

    async def events(self) -> AsyncIterator[list[DeploymentEvent]]:
        yield [event_for(EventKind.SYNCED, copy.deepcopy(self._obj))]
        while True:
            yield await self._changes.get()

    async def get(self, namespace: str, name: str) -> dict[str, Any]:
        self._check(namespace, name)
        return copy.deepcopy(self._obj)

    async def patch_spec(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the in-memory MoEDeployment (spec and metadata); bad specs are refused
        with SpecInvalid naming the field."""
        self._check(namespace, name)
        updated = merge_patch(self._obj, {k: v for k, v in patch.items() if k in ("spec", "metadata")})
        parse_deployment(updated)
        updated["metadata"]["generation"] = int(self._obj["metadata"].get("generation", 1)) + 1
        self._obj = updated
        self._changes.put_nowait([event_for(EventKind.CHANGED, copy.deepcopy(updated))])
        return copy.deepcopy(updated)

    async def record_decision(self, namespace: str, name: str, decision: PlannerDecisionStatus) -> None:
        self._check(namespace, name)
        self._obj.setdefault("status", {})["lastDecision"] = decision.to_wire()

    async def close(self) -> None:
        return None


class EmbeddedPools:
    """The stack's pools as a `PoolScaler`."""

    def __init__(self, stack: Stack, namespace: str, name: str) -> None:
        self.stack, self.namespace, self.name = stack, namespace, name
        self.scales: list[tuple[Role, int]] = []  # every scale asked for, in order

    async def pool_groups(self, namespace: str, deployment: str, role: Role) -> PoolGroups | None:
        if (namespace, deployment) != (self.namespace, self.name):
            return None
        desired, ready = self.stack.pool_groups(role)
        return PoolGroups(desired=desired, ready=ready)

    async def scale(self, namespace: str, deployment: str, role: Role, groups: int) -> None:
        """Record the new size and resize in the background (ScaleError when out of bounds)."""
        if (namespace, deployment) != (self.namespace, self.name):
            raise SourceError(f"no pools of {namespace}/{deployment} in the embedded stack")
        task = self.stack.request_scale(role, groups)
        task.add_done_callback(_log_failure(role, groups))
        self.scales.append((role, groups))


def _log_failure(role: Role, groups: int) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("scaling %s to %d groups failed: %s", role, groups, task.exception())

    return done


def embedded_adapters(stack: Stack, manifest: dict[str, Any]) -> tuple[EmbeddedDeployments, EmbeddedPools]:
    source = EmbeddedDeployments(manifest)
    return source, EmbeddedPools(stack, source.namespace, source.name)
