"""The planner's edges as Protocols, so back ends swap (Dynamo style): live Redis metrics or the
replay simulator on the observing side; the MoEPool scale subresource, the embedded launcher or
the simulated cluster on the acting side. The loop is `observe -> on_tick -> scale_to`.

`moeplane.planner.sim.cluster.Cluster` is the replay back end of both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from moeplane.api.enums import Role
from moeplane.planner.core import Planner
from moeplane.planner.tick import Decision, TickInput

if TYPE_CHECKING:
    from moeplane.planner.observe import PoolGroups


@runtime_checkable
class Observer(Protocol):
    def observe(self, t0: float, t1: float) -> TickInput:
        """The interval [t0, t1) as a tick: its load, and each pool's groups, latency and queues."""
        ...


@runtime_checkable
class Actuator(Protocol):
    def scale_to(self, prefill_groups: int, decode_groups: int) -> None:
        """Ask for these many EP groups per pool. Shrinking drains: requests in flight finish."""
        ...


def plan_once(planner: Planner, observer: Observer, actuator: Actuator, t0: float, t1: float) -> Decision:
    """One turn of the loop: observe the interval, decide, act (only on a change)."""
    decision = planner.on_tick(observer.observe(t0, t1))
    if decision.prefill.changed or decision.decode.changed:
        actuator.scale_to(decision.prefill.desired_groups, decision.decode.desired_groups)
    return decision


@runtime_checkable
class PoolBackend(Protocol):
    """Where the live service reads pool sizes and acts (synchronous; called from a thread).

    `moeplane.planner.kube.KubeClient` is the Kubernetes back end (MoEPool /scale and the
    MoEDeployment status). An embedded back end (the local launcher) implements the same three
    calls over its groups.
    """

    def pool_groups(self, namespace: str, deployment: str, role: Role) -> PoolGroups | None: ...

    def scale_pool(self, namespace: str, deployment: str, role: Role, groups: int) -> int: ...

    def patch_last_decision(self, namespace: str, name: str, last_decision: dict[str, Any]) -> None: ...
