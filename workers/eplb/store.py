"""Expert-load windows and placements in Redis, under the deployment's key prefix.

Keys (from `DeploymentKeys`):
- `expert_load(role, group)`: a hash, one field per rank, each that rank's latest `LoadWindow`
  (header line + raw int64 counts); the key expires when no rank refreshes it.
- `placement(role)`: a hash with the pool's current placement (`version`, `data`, `at_s`).
  Publishing is compare-and-set on the version inside Redis, so two balancers racing can never
  roll a pool back to an older placement. The balancer also writes what the ranks measured
  (`balancedness`, `balancedness_version`, `balancedness_at_s`) to the same hash: one key holds
  everything the operator and the planner read about a pool's EPLB (`read_status`).

Redis is a bus here: ranks and the balancer read what is there and treat a missing key as "no
data yet"; the engine's own placement stays the source of truth for what it runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis
import torch
from moeplane.api.enums import Role
from moeplane.workers.eplb.codec import (
    CodecError,
    decode_matrix,
    decode_placement,
    encode_matrix,
    encode_placement,
)
from moeplane.workers.eplb.counter import LoadWindow
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement

from moeplane.bus.eplb import PoolEplbStatus, as_bytes, read_status, write_status
from moeplane.bus.keys import PLACEMENT_VERSION_FIELD, DeploymentKeys

# Set the placement only if it is newer than the stored one. KEYS[1] hash; ARGV version, data, at_s,
# and the name of the version field.
_CAS_PLACEMENT = """
local current = redis.call('HGET', KEYS[1], ARGV[4])
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[4], ARGV[1], 'data', ARGV[2], 'at_s', ARGV[3])
return 1
"""


@dataclass(frozen=True)
class ExpertLoadWindow:
    """Load windows of one or more EP groups, summed over their ranks.

    Attributes:
        num_windows: rank windows summed.
        num_steps: fewest forward steps any summed window covers.
        logical_counts: [L, E] int64 summed over every window.
        placement_version: newest placement any window counted under.
        slot_counts: [L, R] int64 summed over the windows counted under `placement_version`.
        slot_windows: how many windows `slot_counts` sums.
    """

    num_windows: int
    num_steps: int
    logical_counts: torch.Tensor
    placement_version: int
    slot_counts: torch.Tensor
    slot_windows: int


def encode_window(window: LoadWindow, at_s: float) -> bytes:
    both = torch.cat([window.logical_counts, window.slot_counts], dim=1)
    return encode_matrix(
        both,
        rank=window.rank,
        placement_version=window.placement_version,
        num_steps=window.num_steps,
        slot_steps=window.slot_steps,
        num_logical=int(window.logical_counts.shape[1]),
        at_s=at_s,
    )


def decode_window(data: bytes) -> tuple[LoadWindow, float]:
    both, head = decode_matrix(data)
    try:
        split = int(head["num_logical"])
        window = LoadWindow(
            rank=int(head["rank"]),
            placement_version=int(head["placement_version"]),
            num_steps=int(head["num_steps"]),
            logical_counts=both[:, :split].contiguous(),
            slot_steps=int(head["slot_steps"]),
            slot_counts=both[:, split:].contiguous(),
        )
        return window, float(head["at_s"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"not a load window: {exc}") from None


class EplbStore:
    """Load windows and placements of one pool (role) of a deployment. Synchronous: ranks and the
    balancer call it between forward passes or from their own loop."""

    def __init__(
        self, client: redis.Redis, keys: DeploymentKeys, role: Role, window_ttl_s: float = 600.0
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise EplbError("EplbStore needs a Redis client with decode_responses=False: windows are binary")
        self.client = client
        self.keys = keys
        self.role = Role(role)
        self.window_ttl_s = window_ttl_s
        self._cas = client.register_script(_CAS_PLACEMENT)

    # ---- load windows ---------------------------------------------------------------------
    def publish_window(self, group_id: str, window: LoadWindow, now_s: float | None = None) -> None:
        key = self.keys.expert_load(self.role.value, group_id)
        at_s = time.time() if now_s is None else now_s
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, str(window.rank), encode_window(window, at_s))
        pipe.pexpire(key, int(self.window_ttl_s * 1000))
        pipe.execute()

    def group_ids(self) -> list[str]:
        """EP groups of this pool with a load key (SCAN, so it never blocks Redis)."""
        prefix = self.keys.expert_load(self.role.value, "")
        found = {
            (k.decode() if isinstance(k, bytes) else k)[len(prefix) :]
            for k in self.client.scan_iter(match=prefix + "*", count=500)
        }
        return sorted(found)

    def read_windows(
        self, group_id: str, max_age_s: float | None = None, now_s: float | None = None
    ) -> list[LoadWindow]:
        """The ranks' windows of one group; windows older than `max_age_s` (a rank that died or
        stalled) are left out, and so is any field that does not decode."""
        raw = self.client.hgetall(self.keys.expert_load(self.role.value, group_id))
        now = time.time() if now_s is None else now_s
        out = []
        for value in raw.values():
            try:
                window, at_s = decode_window(as_bytes(value))
            except CodecError:
                continue
            if max_age_s is None or now - at_s <= max_age_s:
                out.append(window)
        return sorted(out, key=lambda w: w.rank)

    def read_load(
        self, group_ids: list[str] | None = None, max_age_s: float | None = None, now_s: float | None = None
    ) -> ExpertLoadWindow | None:
        """Summed windows of the given groups (default: every group of the pool); None if none."""
        windows = [
            w
            for g in (self.group_ids() if group_ids is None else group_ids)
            for w in self.read_windows(g, max_age_s, now_s)
        ]
        if not windows:
            return None
        shape = windows[0].logical_counts.shape
        windows = [w for w in windows if w.logical_counts.shape == shape]
        newest = max(w.placement_version for w in windows)
        current = [w for w in windows if w.placement_version == newest and w.slot_steps > 0]
        slots = windows[0].slot_counts.shape
        return ExpertLoadWindow(
            num_windows=len(windows),
            num_steps=min(w.num_steps for w in windows),
            logical_counts=torch.stack([w.logical_counts for w in windows]).sum(0),
            placement_version=newest,
            slot_counts=torch.stack([w.slot_counts for w in current]).sum(0)
            if current
            else torch.zeros(slots, dtype=torch.int64),
            slot_windows=len(current),
        )

    # ---- placements -----------------------------------------------------------------------
    def publish_placement(self, placement: Placement, now_s: float | None = None) -> bool:
        """Store `placement` if its version is newer than the stored one; True if it was."""
        at_s = time.time() if now_s is None else now_s
        stored = self._cas(
            keys=[self.keys.placement(self.role.value)],
            args=[placement.version, encode_placement(placement), json.dumps(at_s), PLACEMENT_VERSION_FIELD],
        )
        return bool(stored)

    def publish_status(
        self, balancedness: float, placement_version: int, now_s: float | None = None
    ) -> None:
        """Record the pool's measured balancedness under `placement_version`."""
        write_status(self.client, self.keys, self.role, balancedness, placement_version, now_s)

    def read_status(self) -> PoolEplbStatus:
        return read_status(self.client, self.keys, self.role)

    def read_placement(self) -> Placement | None:
        data = self.client.hget(self.keys.placement(self.role.value), "data")
        return None if data is None else decode_placement(as_bytes(data))

