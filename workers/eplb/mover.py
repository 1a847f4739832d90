"""Carry out one step of a `MovePlan` on a rank, over torch.distributed (gloo on CPUs, NCCL on
GPUs): stage the new slots, then commit them between forward passes.

`weights[layer]` is the rank's list of expert weight tensors for that MoE layer, each shaped
[slots_per_rank, ...] (for example w13 [S, 2I, H] and w2 [S, H, I]); a slot's weights are row
`slot % slots_per_rank` of each. Staging reads only the live weights and writes only fresh
buffers, so forward passes can run while it happens; `commit_step` is the only write to live
weights and belongs between two forward passes, on the same step on every rank (see moves.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from moeplane.workers.eplb.moves import MoveStep
from moeplane.workers.eplb.types import EplbError

# (layer, local slot) -> the staged tensors of that slot, in the order of `weights[layer]`.
Staged = dict[tuple[int, int], list[torch.Tensor]]


def stage_step(
    step: MoveStep,
    rank: int,
    weights: Mapping[int, Sequence[torch.Tensor]],
    slots_per_rank: int,
    group: dist.ProcessGroup | None = None,
) -> Staged:
    """Fill staging buffers for this rank's moved slots of `step.layers`.

    Every rank of the group must call it for the same step (sends and receives pair up in plan
    order). Returns the staged slots; nothing live is written.
    """
    staged: Staged = {}
    ops: list[dist.P2POp] = []
    for move in step.moves:
        if move.dst_rank != rank and move.src_rank != rank:
            continue
        tensors = weights.get(move.layer)
        if tensors is None:
            raise EplbError(f"rank {rank} has no weights for MoE layer {move.layer}")
        src_row, dst_row = move.src_slot % slots_per_rank, move.dst_slot % slots_per_rank
        if move.dst_rank == rank:
            buffers = [torch.empty_like(t[0]) for t in tensors]
            staged[(move.layer, dst_row)] = buffers
            if move.is_local:
                for buf, t in zip(buffers, tensors, strict=True):
                    buf.copy_(t[src_row])
            else:
                peer = _global_rank(group, move.src_rank)
                ops += [dist.P2POp(dist.irecv, buf, peer, group) for buf in buffers]
        else:
            peer = _global_rank(group, move.dst_rank)
            ops += [dist.P2POp(dist.isend, t[src_row].contiguous(), peer, group) for t in tensors]
    if ops:
        for request in dist.batch_isend_irecv(ops):
            request.wait()
    return staged


def commit_step(staged: Staged, weights: Mapping[int, Sequence[torch.Tensor]]) -> None:
    """Write the staged slots into the live weights. Call between forward passes."""
    for (layer, row), buffers in staged.items():
        for live, buf in zip(weights[layer], buffers, strict=True):
            live[row].copy_(buf)


def _global_rank(group: dist.ProcessGroup | None, group_rank: int) -> int:
    if group is None or group == dist.group.WORLD:
        return group_rank
    return dist.get_global_rank(group, group_rank)
