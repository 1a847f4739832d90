"""One rank of the weight-move test: run a MovePlan over a real gloo group, check every slot.

Run as: python gloo_mover_worker.py RANK WORLD_SIZE PORT
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from moeplane.workers.eplb.mover import commit_step, stage_step
from moeplane.workers.eplb.moves import plan_moves
from moeplane.workers.placement import Placement

NUM_LAYERS, NUM_EXPERTS, SLOTS_PER_RANK = 3, 8, 6


def expert_weights(layer: int, expert: int) -> list[torch.Tensor]:
    """Weights that identify (layer, expert): a [4, 3] and a [5] tensor."""
    base = float(layer * 100 + expert)
    return [torch.full((4, 3), base), torch.arange(5, dtype=torch.float32) + base]


def main() -> int:
    rank, world, port = (int(x) for x in sys.argv[1:4])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(0)
    num_slots = SLOTS_PER_RANK * world
    rows_old = [
        torch.cat(
            [
                torch.arange(NUM_EXPERTS),
                torch.randint(0, NUM_EXPERTS, (num_slots - NUM_EXPERTS,), generator=gen),
            ]
        )
        for _ in range(NUM_LAYERS)
    ]
    rows_new = [row[torch.randperm(num_slots, generator=gen)] for row in rows_old]
    old = Placement.from_phy2log(torch.stack(rows_old), NUM_EXPERTS)
    new = Placement.from_phy2log(torch.stack(rows_new), NUM_EXPERTS, version=1)

    def slots_of(placement: Placement, layer: int) -> list[int]:
        return placement.phy2log[layer, rank * SLOTS_PER_RANK : (rank + 1) * SLOTS_PER_RANK].tolist()

    weights = {}
    for layer in range(NUM_LAYERS):
        per_slot = [expert_weights(layer, e) for e in slots_of(old, layer)]
        weights[layer] = [torch.stack([w[i] for w in per_slot]) for i in range(2)]
    plan = plan_moves(old, new, world, layers_per_step=2)
    assert plan.num_remote > 0, "the test must move weights between ranks"
    for step in plan.steps:
        staged = stage_step(step, rank, weights, SLOTS_PER_RANK)
        dist.barrier()  # every rank has its batch staged: switch on the same step everywhere
        commit_step(staged, weights)
    for layer in range(NUM_LAYERS):
        for row, expert in enumerate(slots_of(new, layer)):
            want = expert_weights(layer, expert)
            for tensor, expected in zip(weights[layer], want, strict=True):
                if not torch.equal(tensor[row], expected):
                    print(f"rank {rank} layer {layer} slot {row}: wrong weights", flush=True)
                    return 1
    dist.destroy_process_group()
    print(f"rank {rank} OK moves={plan.num_moves} remote={plan.num_remote}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
