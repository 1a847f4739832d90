"""What /health says, pure: from the registered groups (every state) and the routable ones.

A role can serve when it has a live group the router may use. Decode must always serve; prefill
must when any prefill group is registered (with none the deployment runs aggregated: decode
computes prompts). The answer is `unavailable` (HTTP 503) when a role that must serve cannot,
`degraded` (200) when every role serves but some group is restarting or failed, else `ok` (200).
The reason names each group that is not live and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from moeplane.api.enums import Role

from moeplane.bus.registry import GroupState, WorkerGroup


class HealthStatus(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class HealthReport:
    status: HealthStatus
    reason: str
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def can_serve(self) -> bool:
        return self.status is not HealthStatus.UNAVAILABLE


_DOWN = (GroupState.RESTARTING, GroupState.FAILED)


def health_report(groups: list[WorkerGroup], routable: dict[Role, int]) -> HealthReport:
    """`groups`: every registration; `routable`: per role, the groups the router may use now."""
    roles: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    unavailable = False
    for role in (Role.PREFILL, Role.DECODE):
        mine = [g for g in groups if g.role is role]
        counts = {str(s): sum(1 for g in mine if g.state is s) for s in GroupState}
        roles[str(role)] = {
            **counts,
            "routable": routable.get(role, 0),
            "groups": [
                {"group": g.group_id, "state": str(g.state), "restarts": g.restarts, "message": g.message}
                for g in mine
            ],
        }
        down = [f"{g.group_id} {g.state}: {g.message}" for g in mine if g.state in _DOWN]
        must_serve = role is Role.DECODE or bool(mine)
        if must_serve and routable.get(role, 0) == 0:
            unavailable = True
            states = ", ".join(f"{g.group_id} {g.state}" for g in mine)
            detail = "; ".join(down) or states or "none registered"
            problems.append(f"{role}: no live group ({detail})")
        elif down:
            problems.append(f"{role}: " + "; ".join(down))
    if unavailable:
        return HealthReport(HealthStatus.UNAVAILABLE, "; ".join(problems), roles)
    if problems:
        return HealthReport(HealthStatus.DEGRADED, "; ".join(problems), roles)
    return HealthReport(HealthStatus.OK, "", roles)
