"""Dispatch and combine: move tokens to the ranks holding their experts and the outputs back.

The split follows DeepEP's normal mode:

- `dispatch` sends each token at most once to each destination rank (a token whose top-k experts
  share a rank crosses the network once), with the local slots and routing weights of the experts
  it uses there. Per-rank row counts are exchanged first (overlapped with packing), then one
  `all_to_all_single` with uneven splits moves the rows, packed as bytes
  [hidden | slots int32 x K | weights fp32 x K]. The handle also carries the expert-sorted layout.
- The expert side (`expert_inputs`, grouped GEMM, `reduce_expert_outputs`) gathers one row per
  (token, local expert) sorted by local slot, runs the experts, and sums each token's local
  experts weighted by the routing weights (in fp32): one row per received row.
- `combine` sends those rows back (one `all_to_all_single`) and sums each token's ranks.

Ranks with no tokens still call every function: every collective runs with empty tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from moeplane.workers.ep.comm import EPComm
from moeplane.workers.ep.replicas import LayerPlacement, choose_replicas


class DispatchError(ValueError):
    """Inputs to dispatch or combine with inconsistent shapes."""


@dataclass(frozen=True)
class DispatchHandle:
    """What dispatch delivered to this rank, and how to route the results back.

    Received rows (M of them, one per (source token, this rank)):
        recv_hidden: [M, hidden] token states, in the dispatched dtype; grouped by source rank.
    Expert-sorted layout (P pairs, one per (received row, local expert)):
        pair_row: [P] int64 received row of each pair, pairs sorted by local slot.
        pair_weight: [P] fp32 routing weight of each pair.
        tokens_per_slot: [S] int64 pairs per local slot (sums to P).
    For load accounting (EPLB):
        phys_ids: [T, K] int64 physical slot chosen for each of this rank's (token, k) pairs.
    For combine:
        comm: the EP group.
        num_tokens: T, this rank's tokens.
        send_token_idx: [N] int64 source token of each row sent, in destination-rank order.
        send_splits / recv_splits: rows sent to / received from each rank.
    """

    recv_hidden: torch.Tensor
    pair_row: torch.Tensor
    pair_weight: torch.Tensor
    tokens_per_slot: torch.Tensor
    phys_ids: torch.Tensor
    comm: EPComm
    num_tokens: int
    send_token_idx: torch.Tensor
    send_splits: tuple[int, ...]
    recv_splits: tuple[int, ...]

    @property
    def num_recv_rows(self) -> int:
        return sum(self.recv_splits)

    @property
    def num_tokens_sent(self) -> int:
        return sum(self.send_splits)


def _from_bytes(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[M, bytes] uint8 slice -> [M, bytes / itemsize] of dtype (copies only when misaligned)."""
    try:
        return b.view(dtype)
    except RuntimeError:
        return b.contiguous().view(dtype)


def dispatch(
    hidden: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    placement: LayerPlacement,
    comm: EPComm,
) -> DispatchHandle:
    """Send this rank's tokens to the ranks holding their routed experts.

    Args:
        hidden: [T, hidden] this rank's token states (any float dtype; T may be 0).
        topk_ids: [T, K] int64 logical expert ids from the router.
        topk_weights: [T, K] fp32 routing weights (applied by `reduce_expert_outputs`).
        placement: this layer's expert maps as seen from this rank.
        comm: the EP group; must match `placement`'s rank and size.
    """
    if comm.world_size != placement.num_ranks or comm.rank != placement.rank:
        raise DispatchError(
            f"placement is for rank {placement.rank}/{placement.num_ranks}, "
            f"communicator is rank {comm.rank}/{comm.world_size}"
        )
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != hidden.shape[0]:
        raise DispatchError(
            f"hidden {tuple(hidden.shape)}, topk_ids {tuple(topk_ids.shape)} and topk_weights "
            f"{tuple(topk_weights.shape)} must agree on tokens and top-k"
        )
    num_tokens, top_k = topk_ids.shape
    world, slots = comm.world_size, placement.slots_per_rank
    phys = choose_replicas(topk_ids, placement)
    dest = phys // slots
    local_slot = (phys - dest * slots).to(torch.int32)

    # One row per (destination rank, token), rank-major and token-ascending.
    goes_to = torch.zeros(num_tokens, world, dtype=torch.bool, device=hidden.device)
    goes_to.scatter_(1, dest, True)
    dst_rank, src_tok = goes_to.t().nonzero(as_tuple=True)
    send_counts = goes_to.sum(0)
    # Per sent row, K (slot, weight) entries: the slot on the destination rank, or -1 when that
    # expert is served elsewhere. Weights travel bit-cast to int32 in the same tensor.
    match = dest.index_select(0, src_tok) == dst_rank.unsqueeze(1)
    row_slot = torch.where(match, local_slot.index_select(0, src_tok), -1)
    row_weight = torch.where(match, topk_weights.float().index_select(0, src_tok), 0.0)
    meta = torch.cat((row_slot, row_weight.view(torch.int32)), 1)  # [N, 2K] int32

    if world == 1:  # every token "goes" to this rank once, in order: nothing to move
        send_splits = recv_splits = (num_tokens,)
        x_recv, r_meta = hidden, meta
    else:
        recv_counts = comm.start_count_exchange(send_counts)
        packed = _pack_rows(hidden, src_tok, meta, comm)  # while the counts are in flight
        send_splits = tuple(send_counts.tolist())
        recv_splits = tuple(recv_counts().tolist())
        x_recv, r_meta = _exchange_rows(packed, hidden, comm, send_splits, recv_splits)

    # The expert-sorted layout: one pair per (received row, local expert), sorted by slot.
    r_slot = r_meta[:, :top_k].reshape(-1)
    flat = (r_slot >= 0).nonzero().squeeze(1)  # index into the [M, K] entries
    pair_slot = r_slot.index_select(0, flat).to(torch.int64)  # int64 sorts ~2x faster than int32
    flat = flat.index_select(0, torch.argsort(pair_slot, stable=True))
    return DispatchHandle(
        recv_hidden=x_recv,
        pair_row=flat // top_k,
        pair_weight=r_meta[:, top_k:].reshape(-1).index_select(0, flat).view(torch.float32),
        tokens_per_slot=torch.bincount(pair_slot, minlength=slots),
        phys_ids=phys,
        comm=comm,
        num_tokens=num_tokens,
        send_token_idx=src_tok,
        send_splits=send_splits,
        recv_splits=recv_splits,
    )


def _pack_rows(hidden: torch.Tensor, src_tok: torch.Tensor, meta: torch.Tensor, comm: EPComm) -> torch.Tensor:
    """[N, hidden_bytes + 8K] uint8 rows: [hidden | meta int32 x 2K] (workspace memory)."""
    hidden_bytes = hidden.shape[1] * hidden.element_size()
    shape = (src_tok.shape[0], hidden_bytes + 4 * meta.shape[1])
    packed = comm.workspace.get("dispatch_send", shape, torch.uint8, hidden.device)
    # Gather straight into the packed rows (no intermediate copy of the hidden states).
    torch.index_select(hidden, 0, src_tok, out=_from_bytes(packed[:, :hidden_bytes], hidden.dtype))
    packed[:, hidden_bytes:] = meta.view(torch.uint8)
    return packed


def _exchange_rows(
    packed: torch.Tensor, hidden: torch.Tensor, comm: EPComm,
    send_splits: tuple[int, ...], recv_splits: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One all_to_all_single of packed rows; returns the received hidden [M, H] and meta [M, 2K]."""
    hidden_bytes = hidden.shape[1] * hidden.element_size()
    recv = comm.all_to_all_rows(packed, send_splits, recv_splits)
    meta = recv[:, hidden_bytes:].contiguous().view(torch.int32)
    return _from_bytes(recv[:, :hidden_bytes], hidden.dtype), meta


def expert_inputs(handle: DispatchHandle) -> torch.Tensor:
    """[P, hidden] one row per (received row, local expert), sorted by local slot (grouped GEMM input)."""
    return handle.recv_hidden.index_select(0, handle.pair_row)


def reduce_expert_outputs(expert_out: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
    """Weighted sum of each received row's local experts.

    Args:
        expert_out: [P, hidden] expert outputs aligned with `expert_inputs(handle)`; consumed (an
            fp32 expert_out is scaled in place).
    Returns:
        [M, hidden] in expert_out's dtype, summed in fp32: what `combine` sends back.
    """
    if expert_out.shape[0] != handle.pair_row.shape[0]:
        raise DispatchError(
            f"expert_out has {expert_out.shape[0]} rows, dispatch delivered {handle.pair_row.shape[0]} pairs"
        )
    weighted = expert_out.float() if expert_out.dtype != torch.float32 else expert_out
    weighted.mul_(handle.pair_weight.unsqueeze(1))
    dim, device = expert_out.shape[1], expert_out.device
    out = torch.zeros(handle.num_recv_rows, dim, dtype=torch.float32, device=device)
    return out.index_add_(0, handle.pair_row, weighted).to(expert_out.dtype)


def combine(expert_out: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
    """Return each received row's expert output to its source token and sum over ranks.

    Args:
        expert_out: [M, hidden], one row per received row (`reduce_expert_outputs`): the weighted
            sum of this rank's experts for that token.
    Returns:
        [T, hidden] in expert_out's dtype: for each of this rank's tokens, the sum over its top-k
        experts of weight * expert output.
    """
    if expert_out.shape[0] != handle.num_recv_rows:
        raise DispatchError(
            f"expert_out has {expert_out.shape[0]} rows, dispatch received {handle.num_recv_rows}"
        )
    comm = handle.comm
    if comm.world_size == 1:  # received rows are this rank's tokens, in order
        return expert_out
    dim, device = expert_out.shape[1], expert_out.device
    back = comm.workspace.get("combine_recv", (handle.num_tokens_sent, dim), expert_out.dtype, device)
    received = comm.start_all_to_all_rows(expert_out, handle.recv_splits, handle.send_splits, back)
    out = torch.zeros(handle.num_tokens, dim, dtype=torch.float32, device=device)  # while rows fly
    out.index_add_(0, handle.send_token_idx, received().float())
    return out.to(expert_out.dtype)
