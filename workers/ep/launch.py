"""Run one function on every rank of a local EP group, one spawned process per rank.

This is the process-per-rank launcher for tests and benchmarks (serving runs ranks as Ray actors
under `moeplane.workers.serving.controller`). Each rank gets a `RankContext` to join the group
with; results come back pickled through torch.save (tensors are not shared by file descriptor,
so a rank may exit right after returning). A rank that raises fails the whole run with its
traceback; a group that does not finish within `timeout_s` is terminated, so a hang surfaces as an
error.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from moeplane.workers.ep.comm import CommBackend, EPComm
from moeplane.workers.net import free_port


class LaunchError(RuntimeError):
    """A rank failed or the group did not finish in time."""


@dataclass(frozen=True)
class RankContext:
    rank: int
    world_size: int
    init_method: str
    timeout_s: float
    backend: CommBackend | None = None

    def local_device(self, device: torch.device | str) -> torch.device:
        """`device` with a bare "cuda" resolved to this rank's GPU (round-robin over visible GPUs)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.rank % max(torch.cuda.device_count(), 1))
        return device

    def comm(self, device: torch.device | str = "cpu") -> EPComm:
        return EPComm.init(
            self.rank, self.world_size, self.init_method, self.local_device(device), self.timeout_s,
            self.backend,
        )


def _rank_main(target: Callable[..., Any], ctx: RankContext, args: tuple[Any, ...], out: Any) -> None:
    torch.set_num_threads(1)
    try:
        result = target(ctx, *args)
        buf = io.BytesIO()
        torch.save(result, buf)
        out.put((ctx.rank, True, buf.getvalue()))
    except BaseException:
        out.put((ctx.rank, False, traceback.format_exc()))


def spawn_ranks(
    target: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    timeout_s: float = 120.0,
    collective_timeout_s: float = 60.0,
    backend: CommBackend | None = None,
) -> list[Any]:
    """`target(ctx, *args)` on ranks 0..world_size-1 in spawned processes; results in rank order.

    `target` must be importable by the children (a module-level function). `backend` overrides
    the device's default (see `EPComm.init`).
    """
    spawn = mp.get_context("spawn")
    results: Any = spawn.Queue()
    init_method = f"tcp://127.0.0.1:{free_port()}"
    ctxs = [RankContext(r, world_size, init_method, collective_timeout_s, backend) for r in range(world_size)]
    procs = [
        spawn.Process(target=_rank_main, args=(target, c, tuple(args), results), daemon=True) for c in ctxs
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    got: dict[int, Any] = {}
    try:
        while len(got) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(got))
                raise LaunchError(f"ranks {missing} of {world_size} did not finish within {timeout_s:.0f}s")
            try:
                rank, ok, payload = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if r not in got and p.exitcode not in (None, 0)]
                if dead:
                    raise LaunchError(f"rank {dead[0]} exited with code {procs[dead[0]].exitcode}") from None
                continue
            if not ok:
                raise LaunchError(f"rank {rank} failed:\n{payload}")
            got[rank] = torch.load(io.BytesIO(payload), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=5 if len(got) == world_size else 0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return [got[r] for r in range(world_size)]
