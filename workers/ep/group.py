"""`EPGroup`: an EP group as N Ray actors, one per rank, joined in one torch.distributed group.

Each actor is a thin wrapper around an `EPModelRunner`. GPU ranks take `num_gpus=1` (NCCL); CPU
ranks take a fractional CPU share (gloo), the embedded mode. The driver runs a step with
`forward(steps)`, one `RankStep` per rank (None for an idle rank, which still joins every
collective with an empty batch).
"""

from __future__ import annotations

import contextlib
import resource
import socket
from collections.abc import Sequence
from typing import Any

import ray
import torch
from moeplane.api.arch import ModelArch
from moeplane.workers.ep.comm import EPComm
from moeplane.workers.ep.steps import RankStep, StepOutput, run_step
from moeplane.workers.model.runner import EPModelRunner
from moeplane.workers.model.weights import WeightSource
from moeplane.workers.placement import Placement


class EPGroupError(RuntimeError):
    """The group could not start, or a step failed on some rank."""


def _current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:  # not Linux: fall back to the peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class EPRank:
    """One rank: the actor body (plain class, so it is testable without Ray)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.runner: EPModelRunner | None = None
        self.kv_cache: list[torch.Tensor] | None = None

    def rendezvous_address(self) -> str:
        """A free TCP endpoint on this node for the group's store (asked of rank 0)."""
        host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        with socket.socket() as s:
            s.bind((host, 0))
            return f"tcp://{host}:{s.getsockname()[1]}"

    def join(
        self, init_method: str, timeout_s: float, arch: ModelArch, weights: WeightSource | int,
        placement: Placement | None, device: str, dtype: torch.dtype, kv_blocks: int, block_size: int,
    ) -> None:
        if device == "cuda":
            device = "cuda:0"  # Ray exposes the actor's one GPU as device 0.
        comm = EPComm.init(self.rank, self.world_size, init_method, device, timeout_s)
        self.runner = EPModelRunner(arch, weights, placement, comm, device, dtype)
        if kv_blocks:
            self.kv_cache = self.runner.allocate_kv_cache(kv_blocks, block_size)

    def _runner(self) -> EPModelRunner:
        if self.runner is None:
            raise EPGroupError(f"rank {self.rank} has not joined its group")
        return self.runner

    def step(self, step: RankStep) -> StepOutput:
        return run_step(self._runner(), step, self.kv_cache)

    def take_expert_load(self) -> torch.Tensor:
        return self._runner().take_expert_load().cpu()

    def set_placement(self, placement: Placement) -> None:
        self._runner().set_placement(placement)

    def rss_bytes(self) -> int:
        return _current_rss_bytes()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.comm.close()
            self.runner = None


class EPGroup:
    """N rank actors and the driver-side API over them."""

    def __init__(self, actors: list[Any], step_timeout_s: float) -> None:
        self.actors = actors
        self.step_timeout_s = step_timeout_s

    @property
    def world_size(self) -> int:
        return len(self.actors)

    @classmethod
    def start(
        cls,
        arch: ModelArch,
        world_size: int,
        weights: WeightSource | int,
        placement: Placement | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        num_cpus_per_rank: float = 0.25,
        kv_blocks: int = 0,
        block_size: int = 16,
        timeout_s: float = 120.0,
    ) -> EPGroup:
        """Start the actors, join them in one process group and load every rank's weights.

        `timeout_s` bounds start-up and every collective (the process group's timeout).
        """
        if world_size < 1:
            raise EPGroupError(f"world_size must be >= 1, got {world_size}")
        gpu = device.startswith("cuda")
        actor_cls = ray.remote(EPRank).options(
            num_cpus=0 if gpu else num_cpus_per_rank, num_gpus=1 if gpu else 0
        )
        actors: list[Any] = [actor_cls.remote(r, world_size) for r in range(world_size)]
        group = cls(actors, timeout_s)
        try:
            init_method = ray.get(actors[0].rendezvous_address.remote(), timeout=timeout_s)
            group._gather([
                a.join.remote(init_method, timeout_s, arch, weights, placement, device, dtype,
                              kv_blocks, block_size)
                for a in actors
            ])
        except BaseException:
            group.shutdown()
            raise
        return group

    def _gather(self, refs: list[Any]) -> list[Any]:
        try:
            return list(ray.get(refs, timeout=self.step_timeout_s))
        except ray.exceptions.GetTimeoutError:
            raise EPGroupError(f"EP group did not answer within {self.step_timeout_s:.0f}s") from None
        except ray.exceptions.RayActorError as e:
            raise EPGroupError(f"an EP rank died: {e}") from e
        except ray.exceptions.RayTaskError as e:
            raise EPGroupError(f"an EP rank failed: {e}") from e

    def forward(self, steps: Sequence[RankStep | None]) -> list[StepOutput]:
        """Run one step on every rank; `steps[r]` is rank r's batch (None: idle)."""
        if len(steps) != self.world_size:
            raise EPGroupError(f"got {len(steps)} rank batches for a group of {self.world_size}")
        batches = [RankStep.idle() if s is None else s for s in steps]
        return self._gather([a.step.remote(s) for a, s in zip(self.actors, batches, strict=True)])

    def take_expert_load(self) -> list[torch.Tensor]:
        """Per rank, rows per local slot per MoE layer since the last call."""
        return self._gather([a.take_expert_load.remote() for a in self.actors])

    def set_placement(self, placement: Placement) -> None:
        self._gather([a.set_placement.remote(placement) for a in self.actors])

    def rss_bytes(self) -> list[int]:
        return self._gather([a.rss_bytes.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):  # a dead or stuck rank is killed below either way
                ray.get(a.close.remote(), timeout=10)
            ray.kill(a)
        self.actors = []
