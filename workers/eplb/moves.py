"""From one placement to the next: which expert weights move where, a few layers per step.

A plan lists, for every layer whose map changes, one `SlotMove` per physical slot that must
hold a different expert: copied from a slot on the same rank when that rank already held the
expert (a local copy), otherwise received from a rank that did (senders are spread so no rank
sends much more than the others). Layers go in batches of `layers_per_step`, so each batch costs
one short pause of bounded size between forward passes.

Switch semantics (what the engine must do with a plan, and why no request is hurt):
1. Staging. For a batch, every rank fills a staging copy of its slots of those layers: local
   copies and received weights are read from the *live* old weights, which nobody writes during
   the batch. Forward passes may keep running on the old maps meanwhile.
2. Switch. Between two forward passes, and on the same forward step on every rank (the group
   agrees on it, e.g. a barrier after the transfers), each rank swaps the staged slots in and
   switches those layers' maps (phy2log / log2phy rows) to the new placement. A layer's weights
   and map change together, all ranks at once, so dispatch never sends a token to a slot that
   holds another expert.
3. Between batches some layers run on the new placement and some on the old. That is correct:
   placement changes where an expert's tokens go, never the math, so outputs are identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement


@dataclass(frozen=True)
class SlotMove:
    """Fill `dst_slot` of `layer` with `expert`, read from `src_slot` of the old placement."""

    layer: int
    expert: int
    dst_slot: int
    dst_rank: int
    src_slot: int
    src_rank: int

    @property
    def is_local(self) -> bool:
        return self.src_rank == self.dst_rank


@dataclass(frozen=True)
class MoveStep:
    """One batch: the layers that switch together, and the moves that prepare them."""

    layers: tuple[int, ...]
    moves: tuple[SlotMove, ...]

    def sends(self, rank: int) -> tuple[SlotMove, ...]:
        """Moves whose weights `rank` sends to another rank, in plan order (receivers use the same)."""
        return tuple(m for m in self.moves if m.src_rank == rank and not m.is_local)

    def receives(self, rank: int) -> tuple[SlotMove, ...]:
        return tuple(m for m in self.moves if m.dst_rank == rank and not m.is_local)

    def local_copies(self, rank: int) -> tuple[SlotMove, ...]:
        return tuple(m for m in self.moves if m.dst_rank == rank and m.is_local)


@dataclass(frozen=True)
class MovePlan:
    """All batches taking a group from placement `from_version` to `to_version`."""

    from_version: int
    to_version: int
    num_ranks: int
    slots_per_rank: int
    steps: tuple[MoveStep, ...]

    @property
    def num_moves(self) -> int:
        return sum(len(s.moves) for s in self.steps)

    @property
    def num_remote(self) -> int:
        return sum(1 for s in self.steps for m in s.moves if not m.is_local)

    def bytes_moved(self, expert_bytes: float) -> int:
        """Bytes that cross ranks (local copies excluded)."""
        return round(self.num_remote * expert_bytes)


def plan_moves(old: Placement, new: Placement, num_ranks: int, layers_per_step: int = 2) -> MovePlan:
    """The moves that turn `old` into `new` on a group of `num_ranks` ranks.

    Args:
        old / new: placements of the same [L, R] shape over the same experts.
        num_ranks: EP ranks; slot r lives on rank r // (R / num_ranks).
        layers_per_step: changed layers per batch (>= 1).
    Returns:
        a MovePlan; layers whose map is unchanged get no batch.
    """
    if old.phy2log.shape != new.phy2log.shape or old.num_logical != new.num_logical:
        raise EplbError(
            f"cannot move from a {tuple(old.phy2log.shape)} placement over {old.num_logical} experts to a "
            f"{tuple(new.phy2log.shape)} one over {new.num_logical}"
        )
    if layers_per_step < 1:
        raise EplbError(f"layers_per_step must be >= 1, got {layers_per_step}")
    per_rank = old.slots_per_rank(num_ranks)
    changed = (old.phy2log != new.phy2log).any(dim=1).nonzero(as_tuple=True)[0].tolist()
    steps = []
    for start in range(0, len(changed), layers_per_step):
        layers = tuple(changed[start : start + layers_per_step])
        moves: list[SlotMove] = []
        for layer in layers:
            moves += _layer_moves(layer, old.phy2log[layer].tolist(), new.phy2log[layer].tolist(), per_rank)
        steps.append(MoveStep(layers=layers, moves=tuple(moves)))
    return MovePlan(
        from_version=old.version,
        to_version=new.version,
        num_ranks=num_ranks,
        slots_per_rank=per_rank,
        steps=tuple(steps),
    )


def _layer_moves(layer: int, old_row: list[int], new_row: list[int], per_rank: int) -> list[SlotMove]:
    holders: dict[int, list[int]] = {}
    for slot, expert in enumerate(old_row):
        holders.setdefault(expert, []).append(slot)
    sends: dict[int, int] = {}
    moves = []
    for slot, expert in enumerate(new_row):
        if old_row[slot] == expert:
            continue
        rank = slot // per_rank
        sources = holders[expert]  # every expert had a slot in the old placement
        local = [s for s in sources if s // per_rank == rank]
        if local:
            src = local[0]
        else:
            # The least busy sender so far; ties go to the lowest slot, so plans are deterministic.
            src = min(sources, key=lambda s: (sends.get(s // per_rank, 0), s))
            sends[src // per_rank] = sends.get(src // per_rank, 0) + 1
        moves.append(SlotMove(layer, expert, slot, rank, src, src // per_rank))
    return moves


def apply_plan_to_maps(current: torch.Tensor, new: Placement, step: MoveStep) -> torch.Tensor:
    """The phy2log rows in force after `step` switches: [L, R] with `step.layers` taken from `new`."""
    out = current.clone()
    for layer in step.layers:
        out[layer] = new.phy2log[layer]
    return out
