"""The EP group's communicator: a torch.distributed process group plus the two exchanges EP needs.

Gloo's list `all_to_all` rejects unequal sizes, so rows always move with `all_to_all_single`
and explicit split sizes; the per-rank counts are exchanged first. NCCL on GPUs, gloo on CPUs.
A one-rank communicator runs no collectives at all.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

T = TypeVar("T")


class CommBackend(StrEnum):
    GLOO = "gloo"
    NCCL = "nccl"

    @classmethod
    def for_device(cls, device: torch.device | str) -> CommBackend:
        return cls.NCCL if torch.device(device).type == "cuda" else cls.GLOO


class CommError(RuntimeError):
    """The EP process group could not be formed or used."""


class Workspace:
    """Grow-only scratch buffers reused across calls, and small tables built once per group.

    Fresh multi-megabyte CPU allocations cost page faults on every call; reusing them keeps the
    exchange close to the raw collective's cost. A buffer is valid until the next `get` of its name.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}
        self._tables: dict[Hashable, Any] = {}

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """An uninitialised contiguous tensor of `shape`, valid until the next `get(name, ...)`."""
        nbytes = math.prod(shape) * dtype.itemsize
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < nbytes or buf.device != device:
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
            self._bufs[name] = buf
        return buf[:nbytes].view(dtype).view(shape)

    def table(self, key: Hashable, build: Callable[[], T]) -> T:
        """`build()`, memoised under `key`: for values that depend only on the key (group constants)."""
        if key not in self._tables:
            self._tables[key] = build()
        return cast(T, self._tables[key])


@dataclass(frozen=True)
class EPComm:
    """One rank's view of its EP group.

    Attributes:
        rank / world_size: this rank and the group size.
        group: the process group (None for a one-rank group).
        device: where exchanged tensors live (cuda for NCCL, cpu for gloo).
    """

    rank: int
    world_size: int
    group: dist.ProcessGroup | None
    device: torch.device
    workspace: Workspace = field(default_factory=Workspace, compare=False, repr=False)

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> EPComm:
        return cls(rank=0, world_size=1, group=None, device=torch.device(device))

    @classmethod
    def init(
        cls,
        rank: int,
        world_size: int,
        init_method: str,
        device: torch.device | str = "cpu",
        timeout_s: float = 60.0,
        backend: CommBackend | None = None,
        store: dist.Store | None = None,
    ) -> EPComm:
        """Join the default process group at `init_method` (e.g. tcp://127.0.0.1:PORT), or through
        `store` when the caller made the rendezvous store itself (then `init_method` is unused).

        `timeout_s` bounds every collective: a rank that never arrives fails the step with an
        error instead of hanging the group. `backend` defaults to the device's (NCCL for cuda);
        gloo also moves cuda tensors (staged through host memory), which is what several ranks
        sharing one GPU need, since NCCL refuses two ranks on one device.
        """
        if not 0 <= rank < world_size:
            raise CommError(f"rank {rank} is outside a group of {world_size}")
        device = torch.device(device)
        if world_size == 1:
            return cls.single(device)
        backend = backend or CommBackend.for_device(device)
        if backend is CommBackend.NCCL and device.type != "cuda":
            raise CommError(f"NCCL moves cuda tensors only; this rank's device is {device}")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend=backend.value,
            init_method=None if store is not None else init_method,
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        return cls(rank=rank, world_size=world_size, group=dist.group.WORLD, device=device)

    @classmethod
    def from_group(cls, group: dist.ProcessGroup, device: torch.device | str) -> EPComm:
        """Wrap a group the host already created (it must have been given a timeout)."""
        return cls(
            rank=dist.get_rank(group), world_size=dist.get_world_size(group), group=group,
            device=torch.device(device),
        )

    def exchange_counts(self, send_counts: torch.Tensor) -> torch.Tensor:
        """send_counts [W, ...] int64 (counts for each rank) -> recv_counts [W, ...] (from each)."""
        return self.start_count_exchange(send_counts)()

    def start_count_exchange(self, send_counts: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Begin `exchange_counts` without waiting; call the result to get recv_counts.

        Row w of send_counts goes to rank w; row w of the result came from rank w. Lets the caller
        pack its rows while the counts are in flight.
        """
        if send_counts.ndim == 0 or send_counts.shape[0] != self.world_size:
            raise CommError(
                f"send_counts must have one row per rank ({self.world_size}), got {tuple(send_counts.shape)}"
            )
        if self.world_size == 1:
            return lambda: send_counts
        recv = torch.empty_like(send_counts, memory_format=torch.contiguous_format)
        work = dist.all_to_all_single(recv, send_counts.contiguous(), group=self.group, async_op=True)

        def wait() -> torch.Tensor:
            if work is not None:
                work.wait()
            return recv

        return wait

    def all_to_all_rows(
        self, x: torch.Tensor, send_splits: Sequence[int], recv_splits: Sequence[int],
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Send rows of x [N, ...] in rank order by `send_splits`; receive [sum(recv_splits), ...]
        (into `out` when given)."""
        if self.world_size == 1:
            return x
        if out is None:
            out = x.new_empty((sum(recv_splits), *x.shape[1:]))
        dist.all_to_all_single(
            out, x.contiguous(), output_split_sizes=list(recv_splits),
            input_split_sizes=list(send_splits), group=self.group,
        )
        return out

    def start_all_to_all_rows(
        self, x: torch.Tensor, send_splits: Sequence[int], recv_splits: Sequence[int], out: torch.Tensor
    ) -> Callable[[], torch.Tensor]:
        """`all_to_all_rows` into `out` without waiting; call the result to wait for `out`."""
        if self.world_size == 1:
            out.copy_(x)
            return lambda: out
        work = dist.all_to_all_single(
            out, x.contiguous(), output_split_sizes=list(recv_splits),
            input_split_sizes=list(send_splits), group=self.group, async_op=True,
        )

        def wait() -> torch.Tensor:
            if work is not None:
                work.wait()
            return out

        return wait

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.group)

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
