"""Per-rank expert-load counting for the online balancer: cheap on the device, windowed.

Each EP rank routes its own tokens (data-parallel attention) and sends them to physical slots
across the group, so every rank counts [L, R] slot choices of its own tokens; the group's load is
the sum over ranks (summed by the reader from Redis, so ranks need no extra collective).

Counting never syncs the host: `record` is one `index_add_` into a fixed-size row (bincount would
size its output from the largest id, which costs a device-to-host sync on CUDA). The window is a
ring of buckets, each `bucket_steps` forward steps, so memory stays at
buckets x L x (E + R) int64 however long the window. Logical counts are kept too, converted with
the placement in force at each step, so a rebalance does not spoil the history.

Buckets close after `bucket_steps` forward steps, or, with `bucket_s`, after that many seconds
(`spec.eplb.windowSeconds` / buckets): a time window also forgets the load of an idle spell.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement

# Placement "version" of steps counted while a move plan had switched only some layers.
_MIXED = -1


@dataclass(frozen=True)
class LoadWindow:
    """One rank's counts over its sliding window.

    Attributes:
        rank: EP rank that counted.
        placement_version: the placement in force for `slot_counts`.
        num_steps: forward steps covered by `logical_counts`.
        logical_counts: [L, E] int64 token choices per logical expert over the whole window.
        slot_steps: forward steps covered by `slot_counts` (those under `placement_version`).
        slot_counts: [L, R] int64 token choices per physical slot under the current placement.
    """

    rank: int
    placement_version: int
    num_steps: int
    logical_counts: torch.Tensor
    slot_steps: int
    slot_counts: torch.Tensor


class ExpertLoadCounter:
    """Counts of one rank's routed tokens per (MoE layer, physical slot), over a sliding window.

    Call `record(layer, slots)` in each MoE layer after the router picked physical slots, then
    `end_step()` once per forward pass. `window()` copies the sums to the host.
    """

    def __init__(
        self,
        rank: int,
        placement: Placement,
        num_buckets: int = 8,
        bucket_steps: int = 16,
        device: torch.device | str = "cpu",
        bucket_s: float | None = None,
    ) -> None:
        if num_buckets < 1 or bucket_steps < 1:
            raise EplbError(f"num_buckets ({num_buckets}) and bucket_steps ({bucket_steps}) must be >= 1")
        if bucket_s is not None and not bucket_s > 0:
            raise EplbError(f"bucket_s must be > 0 seconds, got {bucket_s}")
        self.rank = rank
        self.bucket_s = bucket_s
        self._opened_s = time.monotonic()
        self.device = torch.device(device)
        self.num_buckets = num_buckets
        self.bucket_steps = bucket_steps
        layers, slots, experts = placement.num_layers, placement.num_physical, placement.num_logical
        self._logical = torch.zeros(num_buckets, layers, experts, dtype=torch.int64, device=self.device)
        self._slots = torch.zeros(num_buckets, layers, slots, dtype=torch.int64, device=self.device)
        self._bucket_steps = [0] * num_buckets
        self._bucket_version = [placement.version] * num_buckets
        self._current = torch.zeros(layers, slots, dtype=torch.int64, device=self.device)
        self._ones: torch.Tensor | None = None
        self._pos = 0
        self._use(placement)

    @property
    def placement_version(self) -> int:
        return self._version

    def _use(self, placement: Placement) -> None:
        self._version = placement.version
        self._phy2log = placement.phy2log.to(self.device)
        self._num_logical = placement.num_logical

    def record(self, layer: int, slots: torch.Tensor) -> None:
        """Count one MoE layer's choices. slots: [T, K] or [N] int64 physical slot ids, on the
        counter's device, every id in [0, R)."""
        flat = slots.reshape(-1)
        if self._ones is None or self._ones.numel() < flat.numel():
            self._ones = torch.ones(max(flat.numel(), 1024), dtype=torch.int64, device=self.device)
        self._current[layer].index_add_(0, flat, self._ones[: flat.numel()])

    def end_step(self, now_s: float | None = None) -> None:
        """Close one forward pass: fold its counts into the current bucket.

        `now_s` (time.monotonic() by default) drives time buckets; step buckets ignore it."""
        self._expire(now_s)
        pos = self._pos
        self._slots[pos] += self._current
        self._logical[pos].scatter_add_(1, self._phy2log, self._current)
        self._current.zero_()
        self._bucket_steps[pos] += 1
        if self.bucket_s is None and self._bucket_steps[pos] >= self.bucket_steps:
            self._rotate()

    def _expire(self, now_s: float | None) -> None:
        """Time buckets: close the open bucket once `bucket_s` old, and drop as many old buckets as
        whole periods passed (an idle rank's window empties instead of keeping stale load)."""
        if self.bucket_s is None:
            return
        now = time.monotonic() if now_s is None else now_s
        periods = int((now - self._opened_s) // self.bucket_s)
        for _ in range(min(periods, self.num_buckets)):
            self._rotate()
        if periods:
            self._opened_s += periods * self.bucket_s

    def _rotate(self) -> None:
        self._pos = (self._pos + 1) % self.num_buckets
        self._logical[self._pos].zero_()
        self._slots[self._pos].zero_()
        self._bucket_steps[self._pos] = 0
        self._bucket_version[self._pos] = self._version

    def switch_placement(self, placement: Placement, layers: Sequence[int] | None = None) -> None:
        """Count under `placement` from the next step on, for `layers` (default: all of them).

        Call between forward passes, once per switched batch of a move plan. The open bucket
        closes early; while only some layers have switched, slot counts are tagged as belonging
        to no placement (logical counts stay exact throughout).
        """
        if (placement.num_layers, placement.num_physical, placement.num_logical) != (
            self._phy2log.shape[0],
            self._phy2log.shape[1],
            self._num_logical,
        ):
            raise EplbError(
                f"placement {tuple(placement.phy2log.shape)} over {placement.num_logical} experts does not "
                f"fit this counter's {tuple(self._phy2log.shape)} over {self._num_logical}"
            )
        if bool(self._current.any()):
            raise EplbError("switch_placement called mid-step: call end_step() first")
        new_rows = placement.phy2log.to(self.device)
        if layers is None:
            self._phy2log = new_rows
        else:
            index = torch.tensor(list(layers), dtype=torch.int64, device=self.device)
            self._phy2log = self._phy2log.index_copy(0, index, new_rows.index_select(0, index))
        complete = bool(torch.equal(self._phy2log, new_rows))
        self._version = placement.version if complete else _MIXED
        # Batches of one move plan share one mixed bucket, so a long plan costs the window at
        # most two buckets of slot history (logical counts are kept either way).
        still_mixed = self._version == _MIXED == self._bucket_version[self._pos]
        if self._bucket_steps[self._pos] and not still_mixed:
            self._rotate()
            self._opened_s = time.monotonic()
        self._bucket_version[self._pos] = self._version

    def window(self, now_s: float | None = None) -> LoadWindow:
        """The sums over the window, copied to the host (one sync). Call between forward passes."""
        self._expire(now_s)
        same = [
            v == self._version != _MIXED and n > 0
            for v, n in zip(self._bucket_version, self._bucket_steps, strict=True)
        ]
        mask = torch.tensor(same, device=self.device)
        slot_counts = (self._slots * mask.view(-1, 1, 1)).sum(0)
        return LoadWindow(
            rank=self.rank,
            placement_version=self._version,
            num_steps=sum(self._bucket_steps),
            logical_counts=self._logical.sum(0).cpu(),
            slot_steps=sum(n for n, s in zip(self._bucket_steps, same, strict=True) if s),
            slot_counts=slot_counts.cpu(),
        )

    def reset(self) -> None:
        for t in (self._logical, self._slots, self._current):
            t.zero_()
        self._bucket_steps = [0] * self.num_buckets
        self._bucket_version = [self._version] * self.num_buckets
        self._pos = 0
        self._opened_s = time.monotonic()
