"""How far the embedded stack lets a pool be resized (pure: no Ray, no sockets).

`check_groups` bounds a requested size by the pool's manifest bounds and the embedded cap (two CPU
cores run every rank of every group). Which groups a resize starts or drains, and when a draining
group may stop, are the supervisor's rules (`moeplane.workers.supervisor`), the same as in
Kubernetes.
"""

from __future__ import annotations

from moeplane.api.enums import Role

# Most groups per pool the embedded stack starts, whatever the manifest allows: each EP2 group
# is two rank actors and a gRPC server on a laptop-sized CPU.
EMBEDDED_MAX_GROUPS = 4


class ScaleError(ValueError):
    """A pool size the embedded stack cannot run (names the pool and the bounds)."""


def check_groups(role: Role, groups: int, min_groups: int, max_groups: int) -> int:
    """`groups` if it is within [max(1, min_groups) for decode, max_groups], else ScaleError."""
    low = max(min_groups, 1 if role is Role.DECODE else 0)
    high = min(max_groups, EMBEDDED_MAX_GROUPS)
    if not low <= groups <= high:
        raise ScaleError(
            f"spec.{role}: {groups} groups is outside the embedded bounds [{low}, {high}] "
            f"(minReplicas {min_groups}, maxReplicas {max_groups}, embedded cap {EMBEDDED_MAX_GROUPS})"
        )
    return groups
