"""The planner's embedded back end: `moeplane up` has no cluster, so the planner acts on the
`EmbeddedStack` in this process and keeps the MoEDeployment in memory.

`EmbeddedBackend` is the `PoolBackend` the planner loop needs (pool sizes, scale, last decision)
plus the reads and writes the planner service does on the CRs (list/watch, get, patch spec), so
`PlannerService` runs unchanged on top of it. There is no MoEDeployment CR in embedded mode: the
dashboard's Apply merge-patches the in-memory spec, which the service sees through the watch
like a CR change, and the next tick plans with the new settings.

The service calls these from worker threads; the stack lives on the event loop, so scaling is
handed to the loop (`run_coroutine_threadsafe`) and returns once the new size is recorded,
without waiting for groups to start or drain.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from moeplane.api.enums import Role
from moeplane.api.spec import GROUP, VERSION, parse_deployment
from moeplane.operator.names import pool_name
from moeplane.planner.kube import DEPLOYMENTS, POOLS, KubeError, WatchEvent
from moeplane.planner.observe import PoolGroups

if TYPE_CHECKING:
    from moeplane.workers.embedded.stack import EmbeddedStack

log = logging.getLogger(__name__)

APPLY_TARGET = "the embedded stack's in-memory spec (embedded mode has no MoEDeployment CR)"
_WATCH_POLL_S = 0.2


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


class EmbeddedBackend:
    """One deployment (the manifest `moeplane up` runs) over one embedded stack."""

    apply_target = APPLY_TARGET

    def __init__(
        self, stack: EmbeddedStack, manifest: dict[str, Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        obj = copy.deepcopy(manifest)
        parse_deployment(obj)  # a manifest the stack runs is valid already; fail early if not
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta["generation"] = 1
        self.stack, self.loop = stack, loop
        self.namespace, self.name = str(meta["namespace"]), str(meta["name"])
        self._obj = obj
        self._version = 1
        self._changed = threading.Condition()
        self.scales: list[tuple[Role, int]] = []  # every scale asked for, in order
        self._pending: set[Future[Any]] = set()

    # ---- PoolBackend ------------------------------------------------------------------------
    def pool_groups(self, namespace: str, deployment: str, role: Role) -> PoolGroups | None:
        if (namespace, deployment) != (self.namespace, self.name):
            return None
        desired, ready = self.stack.pool_groups(role)
        return PoolGroups(desired=desired, ready=ready)

    def scale_pool(self, namespace: str, deployment: str, role: Role, groups: int) -> int:
        """Resize the stack's pool; returns the size it had. Raises ScaleError out of bounds."""
        self._check(namespace, deployment)
        before, _ = self.stack.pool_groups(role)

        async def begin() -> None:
            task = self.stack.request_scale(role, groups)
            task.add_done_callback(_log_failure(role, groups))

        asyncio.run_coroutine_threadsafe(begin(), self.loop).result(timeout=30.0)
        self.scales.append((role, groups))
        self._bump()
        return before

    def patch_last_decision(self, namespace: str, name: str, last_decision: dict[str, Any]) -> None:
        self._check(namespace, name)
        with self._changed:
            self._obj.setdefault("status", {})["lastDecision"] = copy.deepcopy(last_decision)

    # ---- what PlannerService reads and writes on the CRs --------------------------------------
    def list_objects(self, plural: str, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        with self._changed:
            return self._items(plural, namespace), str(self._version)

    def watch_objects(
        self,
        plural: str,
        namespace: str | None,
        resource_version: str,
        timeout_s: int,
        stop: Callable[[], bool],
    ) -> Iterator[WatchEvent]:
        """A MODIFIED event per object whenever the spec or a pool's size changes."""
        last = (int(resource_version or 0), self._sizes())
        deadline = time.monotonic() + timeout_s
        while not stop() and time.monotonic() < deadline:
            with self._changed:
                self._changed.wait(timeout=_WATCH_POLL_S)
                now = (self._version, self._sizes())
                if now == last:
                    continue
                last = now
                items = self._items(plural, namespace)
            for item in items:
                yield WatchEvent("MODIFIED", item)

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        self._check(namespace, name)
        with self._changed:
            return copy.deepcopy(self._obj)

    def patch_spec(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the in-memory MoEDeployment (spec and metadata); bad specs are refused."""
        self._check(namespace, name)
        with self._changed:
            updated = merge_patch(self._obj, {k: v for k, v in patch.items() if k in ("spec", "metadata")})
            parse_deployment(updated)  # SpecInvalid names the field
            updated["metadata"]["generation"] = int(self._obj["metadata"].get("generation", 1)) + 1
            self._obj = updated
            self._version += 1
            self._changed.notify_all()
            return copy.deepcopy(updated)

    # ---- internals --------------------------------------------------------------------------
    def _check(self, namespace: str, name: str) -> None:
        if (namespace, name) != (self.namespace, self.name):
            raise KubeError(
                f"MoEDeployment {namespace}/{name}: 404 the embedded stack runs only "
                f"{self.namespace}/{self.name}"
            )

    def _bump(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def _sizes(self) -> tuple[tuple[int, int], ...]:
        return tuple(self.stack.pool_groups(role) for role in Role)

    def _items(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        if namespace not in (None, self.namespace):
            return []
        if plural == DEPLOYMENTS:
            return [copy.deepcopy(self._obj)]
        if plural == POOLS:
            return [self._pool(role) for role in Role]
        raise KubeError(f"list {plural}: 404 the embedded back end serves {DEPLOYMENTS} and {POOLS}")

    def _pool(self, role: Role) -> dict[str, Any]:
        """A MoEPool-shaped view of the stack's pool, for the dashboard."""
        desired, ready = self.stack.pool_groups(role)
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MoEPool",
            "metadata": {"name": pool_name(self.name, role), "namespace": self.namespace},
            "spec": {"replicas": desired, "role": role.value},
            "status": {"replicas": ready, "readyReplicas": ready},
        }


def _log_failure(role: Role, groups: int) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("scaling %s to %d groups failed: %s", role, groups, task.exception())

    return done
