"""Dispatch and combine: move tokens to the ranks holding their experts and the outputs back.

The split follows DeepEP's normal mode:

- `dispatch` sends each token at most once to each destination rank (a token whose top-k experts
  share a rank crosses the network once). A send plan is computed once (`plan_sends`) and serves
  both directions. Per destination, [rows | pairs per slot] counts are exchanged first (overlapped
  with packing), then one `all_to_all_single` with uneven splits moves the rows, packed as bytes
  [hidden | physical slots int32 x K | weights fp32 x K] and gathered straight into a reused send
  buffer. The receiver sorts the (row, k) entries that name its own slots (`expert_layout`).
- The expert side (`expert_inputs`, grouped GEMM, `reduce_expert_outputs`) gathers one row per
  (token, local expert) sorted by local slot, runs the experts, and sums each token's local
  experts weighted by the routing weights (in fp32): one row per received row.
- `combine` sends those rows back (one `all_to_all_single` into a reused buffer) and sums each
  token's ranks with one `index_add_`.

Host syncs: here, only the two count tensors (sent and received) are read on the host; every other
size follows from them, so the CUDA path runs no `nonzero`/`bincount` sync (nor does
`choose_replicas` on CUDA).
Ranks with no tokens still call every function: every collective runs with empty tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from moeplane.workers.ep.comm import EPComm
from moeplane.workers.ep.replicas import LayerPlacement, choose_replicas


class DispatchError(ValueError):
    """Inputs to dispatch or combine with inconsistent shapes."""


@dataclass(frozen=True)
class RoutingTables:
    """Lookups over the physical slots p in [0, W * S), fixed for a (group, rank, S).

    Attributes:
        num_ranks / slots_per_rank: W and S; slot p lives on rank p // S.
        count_pos: [W * S] int64 where p's pair counter sits in a flattened [W, 1 + S] counts.
        local_key: [W * S] p's slot on this rank, or S when another rank holds it (int16 on the
            CPU, where it feeds a radix sort; int64 on CUDA).
    """

    num_ranks: int
    slots_per_rank: int
    count_pos: torch.Tensor
    local_key: torch.Tensor

    @classmethod
    def build(
        cls, rank: int, num_ranks: int, slots_per_rank: int, device: torch.device | str = "cpu"
    ) -> RoutingTables:
        device = torch.device(device)
        phys = torch.arange(num_ranks * slots_per_rank, device=device)
        local = phys - rank * slots_per_rank
        local_key = torch.where((local >= 0) & (local < slots_per_rank), local, slots_per_rank)
        small = device.type == "cpu" and slots_per_rank < 2**15
        return cls(
            num_ranks=num_ranks,
            slots_per_rank=slots_per_rank,
            count_pos=phys + torch.div(phys, slots_per_rank, rounding_mode="floor") + 1,
            local_key=local_key.to(torch.int16) if small else local_key,
        )

    @classmethod
    def of(cls, comm: EPComm, slots_per_rank: int, device: torch.device) -> RoutingTables:
        """The tables of `comm`'s rank on `device`, built once per communicator."""
        key = ("routing_tables", slots_per_rank, device)
        return comm.workspace.table(
            key, lambda: cls.build(comm.rank, comm.world_size, slots_per_rank, device)
        )


@dataclass(frozen=True)
class SendPlan:
    """Where this rank's tokens go, computed once per dispatch and reused by combine.

    Attributes:
        send_token_idx: [N] int64 source token of each row sent, rank-major then token-ascending.
        counts: [W, 1 + S] int64 per destination rank: rows, then (token, k) pairs per slot there.
        send_splits: rows sent to each rank (host ints, read from `counts`).
    """

    send_token_idx: torch.Tensor
    counts: torch.Tensor
    send_splits: tuple[int, ...]


@dataclass(frozen=True)
class ExpertLayout:
    """The received (row, k) entries that name this rank's slots, sorted by local slot.

    Attributes:
        pair_row: [P] int64 received row of each pair.
        pair_weight: [P] fp32 routing weight of each pair.
    """

    pair_row: torch.Tensor
    pair_weight: torch.Tensor


@dataclass(frozen=True)
class DispatchHandle:
    """What dispatch delivered to this rank, and how to route the results back.

    Received rows (M of them, one per (source token, this rank)):
        recv_hidden: [M, hidden] token states, in the dispatched dtype; grouped by source rank.
            With more than one rank it is a view into the communicator's receive buffer: valid
            until the next `dispatch` on the same communicator.
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


def _meta_offset(hidden: torch.Tensor) -> int:
    """Byte offset of the metadata in a packed row: the hidden bytes rounded up to 8, so that the
    hidden part (any dtype up to 8 bytes) and the int32 metadata are aligned views of the row."""
    return -(-hidden.shape[1] * hidden.element_size() // 8) * 8


def packed_row_bytes(hidden_size: int, dtype: torch.dtype, top_k: int) -> int:
    """Bytes dispatch moves per row: hidden (padded to 8) + K int32 slots + K fp32 weights."""
    return -(-hidden_size * dtype.itemsize // 8) * 8 + 8 * top_k


def _nonzero(mask: torch.Tensor, count: int) -> torch.Tensor:
    """[count, mask.ndim] int64 indices of `mask`'s True entries, row-major; `count` must be exact.

    On CUDA `nonzero` reads its output size back to the host; the count is already known there.
    """
    if mask.is_cuda:
        return torch.nonzero_static(mask, size=count)
    return mask.nonzero()


def _stable_argsort(keys: torch.Tensor) -> torch.Tensor:
    """[n] small non-negative ints (int16 on the CPU) -> [n] int64 order, ties kept in input order.

    torch's CPU sort compares; numpy's stable sort of 16-bit ints is a radix sort, ~3x faster at
    the sizes of a step. CUDA's sort is a radix sort already.
    """
    if keys.is_cuda or keys.dtype != torch.int16:
        return torch.argsort(keys, stable=True)
    return torch.from_numpy(np.argsort(keys.numpy(), kind="stable"))


def count_sends(phys_ids: torch.Tensor, tables: RoutingTables) -> tuple[torch.Tensor, torch.Tensor]:
    """Which rank each of this rank's tokens goes to, and the counts to announce.

    Args:
        phys_ids: [T, K] int64 physical slot of each (token, k) pair; slot p is on rank p // S.
        tables: the group's lookups.
    Returns:
        goes_to: [W, T] bool, whether token t has an expert on rank w.
        counts: [W, 1 + S] int64 per rank: rows (tokens) it gets, then pairs per slot there.
    """
    world, slots = tables.num_ranks, tables.slots_per_rank
    dest = torch.div(phys_ids, slots, rounding_mode="floor")
    goes_to = torch.zeros(world, phys_ids.shape[0], dtype=torch.bool, device=phys_ids.device)
    goes_to.scatter_(0, dest.t(), True)
    counts = torch.zeros(world, 1 + slots, dtype=torch.int64, device=phys_ids.device)
    torch.sum(goes_to, 1, out=counts[:, 0])
    pos = tables.count_pos.index_select(0, phys_ids.reshape(-1))
    counts.view(-1).scatter_add_(0, pos, pos.new_ones(1).expand_as(pos))  # scatter: no host sync
    return goes_to, counts


def plan_sends(goes_to: torch.Tensor, counts: torch.Tensor) -> SendPlan:
    """The rows to send, rank-major then token-ascending, from `count_sends`' results."""
    send_splits = tuple(counts[:, 0].tolist())
    src_tok = _nonzero(goes_to, sum(send_splits))[:, 1].contiguous()
    return SendPlan(send_token_idx=src_tok, counts=counts, send_splits=send_splits)


def expert_layout(
    recv_phys: torch.Tensor, recv_weight: torch.Tensor, num_pairs: int, tables: RoutingTables
) -> ExpertLayout:
    """Sort the received (row, k) entries naming this rank's slots by local slot (stable).

    Args:
        recv_phys: [M, K] int32/int64 physical slot of each received row's k-th expert.
        recv_weight: [M, K] fp32 matching routing weights.
        num_pairs: P, how many entries name this rank's slots (from the count exchange).
        tables: the group's lookups (other ranks' slots get key S and sort last).
    """
    order = _stable_argsort(tables.local_key.index_select(0, recv_phys.reshape(-1)))[:num_pairs]
    return ExpertLayout(
        pair_row=torch.div(order, recv_phys.shape[1], rounding_mode="floor"),
        pair_weight=torch.take(recv_weight, order),
    )


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
    weights = topk_weights.float()

    tables = RoutingTables.of(comm, slots, phys.device)
    goes_to, counts = count_sends(phys, tables)
    if world == 1:  # every token "goes" to this rank once, in order: nothing to move
        layout = expert_layout(phys, weights, num_tokens * top_k, tables)
        return DispatchHandle(
            recv_hidden=hidden, pair_row=layout.pair_row, pair_weight=layout.pair_weight,
            tokens_per_slot=counts[0, 1:], phys_ids=phys, comm=comm, num_tokens=num_tokens,
            send_token_idx=plan_sends(goes_to, counts).send_token_idx,
            send_splits=(num_tokens,), recv_splits=(num_tokens,),
        )

    recv_counts_wait = comm.start_count_exchange(counts)
    plan = plan_sends(goes_to, counts)  # while the counts are in flight
    packed = _pack_rows(hidden, phys, weights, plan.send_token_idx, comm)
    recv_counts = recv_counts_wait()  # [W, 1 + S]: rows, then pairs per local slot, from each rank
    host = recv_counts.tolist()
    recv_splits = tuple(row[0] for row in host)
    num_pairs = sum(sum(row[1:]) for row in host)
    recv_shape = (sum(recv_splits), packed.shape[1])
    recv = comm.workspace.get("dispatch_recv", recv_shape, torch.uint8, hidden.device)
    comm.all_to_all_rows(packed, plan.send_splits, recv_splits, out=recv)

    meta_at = _meta_offset(hidden)
    recv_meta = recv[:, meta_at:].view(torch.int32)  # [M, 2K]: slots, then weight bits
    layout = expert_layout(
        recv_meta[:, :top_k], recv_meta[:, top_k:].view(torch.float32), num_pairs, tables
    )
    return DispatchHandle(
        recv_hidden=recv[:, :meta_at].view(hidden.dtype)[:, : hidden.shape[1]],
        pair_row=layout.pair_row,
        pair_weight=layout.pair_weight,
        tokens_per_slot=recv_counts[:, 1:].sum(0),
        phys_ids=phys,
        comm=comm,
        num_tokens=num_tokens,
        send_token_idx=plan.send_token_idx,
        send_splits=plan.send_splits,
        recv_splits=recv_splits,
    )


def _pack_rows(
    hidden: torch.Tensor, phys: torch.Tensor, weights: torch.Tensor, src_tok: torch.Tensor, comm: EPComm
) -> torch.Tensor:
    """[N, B + 8K] uint8 send rows [hidden | pad to B | phys int32 x K | weights fp32 x K] (B: the
    hidden bytes rounded up to 8), gathered straight into the communicator's send buffer (valid
    until the next dispatch)."""
    top_k = phys.shape[1]
    meta_at = _meta_offset(hidden)
    shape = (src_tok.shape[0], meta_at + 8 * top_k)
    packed = comm.workspace.get("dispatch_send", shape, torch.uint8, hidden.device)
    # Per-token metadata first ([T, 2K] int32, small), then one gather per part into the rows.
    meta_shape = (phys.shape[0], 2 * top_k)
    token_meta = comm.workspace.get("dispatch_token_meta", meta_shape, torch.int32, hidden.device)
    token_meta[:, :top_k] = phys
    token_meta[:, top_k:] = weights.view(torch.int32)
    packed_hidden = packed[:, :meta_at].view(hidden.dtype)[:, : hidden.shape[1]]
    torch.index_select(hidden, 0, src_tok, out=packed_hidden)
    torch.index_select(token_meta, 0, src_tok, out=packed[:, meta_at:].view(torch.int32))
    return packed


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
