"""`RankWorker`: one EP rank of a serving group, the body of a Ray actor (thin: it builds the
runner, the KV cache and the KV transport, then forwards `step()` to its `RankEngine`).

The KV transport runs on the worker's own event-loop thread, so the rank serves exported KV and
pulls imported KV while its main thread runs model steps.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass, field

import ray
import torch
import torch.distributed as dist
from moeplane.api.arch import ModelArch
from moeplane.api.podtemplate import MooncakeSpec
from moeplane.workers.ep.comm import EPComm
from moeplane.workers.grpc_security import GrpcSecurity, advertised_host
from moeplane.workers.kv.frames import DEFAULT_CHUNK_BYTES
from moeplane.workers.kv.grpc_backend import GrpcKVTransport, run_expiry
from moeplane.workers.kv.layout import KVBackend
from moeplane.workers.kv.transport import KVTransport
from moeplane.workers.model import (
    EPModelRunner,
    SafetensorsWeights,
    Tokenizer,
    WeightSource,
    load_tokenizer,
    resolve_checkpoint,
)
from moeplane.workers.placement import Placement
from moeplane.workers.serving.engine import EngineConfig, RankEngine, RankStats, StepInput, StepResult
from moeplane.workers.serving.loop import LoopThread


@dataclass(frozen=True)
class RankSpec:
    """Everything a rank needs to start; the same for every rank of a group.

    `weights` is a seed, a `WeightSource`, or a checkpoint location (a local path, pvc://CLAIM/PATH
    or hf://ORG/REPO[@REV]) that each rank resolves on its own node and reads its own experts
    from. `tokenizer` is a location or "bytes"; None means the checkpoint's own tokenizer when
    `weights` is a location, else the byte tokenizer (tiny).
    """

    arch: ModelArch
    weights: WeightSource | int | str
    engine: EngineConfig
    placement: Placement | None = None
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    kv_backend: KVBackend = KVBackend.GRPC
    kv_chunk_bytes: int = DEFAULT_CHUNK_BYTES
    kv_streams: int = 1  # parallel gRPC streams (each its own connection) per pull
    # Mooncake's protocol (tcp | rdma) and RDMA devices (spec.kvTransfer.mooncake, its deviceName
    # resolved from spec.hardware.rdma.hcas when unset); None: tcp on any device.
    mooncake: MooncakeSpec | None = None
    bind_host: str = "127.0.0.1"
    advertise_host: str | None = None
    security: GrpcSecurity = field(default_factory=GrpcSecurity)
    collective_timeout_s: float = 60.0  # bounds every collective (gloo and NCCL process-group timeout)
    torch_threads: int = 1
    tokenizer: str | None = None

    def weight_source(self) -> WeightSource | int:
        """The weights as the runner takes them (a location resolved on this node)."""
        if isinstance(self.weights, str):
            return SafetensorsWeights(resolve_checkpoint(self.weights))
        return self.weights

    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer for stop strings and EOS (resolved on this node)."""
        location = self.tokenizer
        if location is None and isinstance(self.weights, str):
            location = self.weights
        return load_tokenizer(location, self.arch)


def make_transport(spec: RankSpec) -> KVTransport:
    if spec.kv_backend is KVBackend.MOONCAKE:
        from moeplane.workers.kv.mooncake_backend import MooncakeKVTransport

        mooncake = spec.mooncake or MooncakeSpec()
        return MooncakeKVTransport(
            host=spec.bind_host,
            protocol=mooncake.protocol.value,
            device_name=mooncake.device_name or "",
            advertise_host=spec.advertise_host,
            security=spec.security,
        )
    return GrpcKVTransport(
        host=spec.bind_host,
        security=spec.security,
        chunk_bytes=spec.kv_chunk_bytes,
        advertise_host=spec.advertise_host,
        streams=spec.kv_streams,
    )


# The Ray concurrency group of `RankWorker.ping`: its own thread, so a liveness probe is answered
# while a step (or a stats call waiting on the step) occupies the default group's threads.
LIVENESS_GROUP = "liveness"


@dataclass(frozen=True)
class RankIdentity:
    """Where a rank actor runs: what a supervisor needs to kill it if Ray cannot."""

    pid: int
    node_id: str


class RankWorker:
    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size = rank, world_size
        self.engine: RankEngine | None = None
        self.loop: LoopThread | None = None
        self._store_listener: socket.socket | None = None  # rank 0: the store's listening socket

    def assign(self, rank: int, world_size: int) -> None:
        """Give a spare actor (started ahead, its imports done) its place in a group, before `start`."""
        if self.engine is not None:
            raise RuntimeError(f"rank {self.rank} is already serving")
        self.rank, self.world_size = rank, world_size

    def rendezvous_address(self, host: str = "127.0.0.1") -> str:
        """The endpoint of the group's torch.distributed store (asked of rank 0, which serves it).

        The listening socket is bound here, on `host` only, and handed to the store at `start`: no
        free port is probed and then lost to another process, and a loopback host keeps the store
        off every other interface. A wildcard bind advertises this host's own address so ranks on
        other nodes can dial it.
        """
        listener = socket.create_server((host or "0.0.0.0", 0))
        self._store_listener = listener
        return f"tcp://{advertised_host(host)}:{listener.getsockname()[1]}"

    def _store(self, init_method: str, timeout_s: float) -> dist.TCPStore:
        host, _, port = init_method.removeprefix("tcp://").rpartition(":")
        listener = self._store_listener if self.rank == 0 else None
        return dist.TCPStore(
            host, int(port), self.world_size, is_master=self.rank == 0,
            timeout=datetime.timedelta(seconds=timeout_s),
            master_listen_fd=None if listener is None else listener.fileno(),
        )

    def start(self, init_method: str, spec: RankSpec) -> str:
        """Join the EP group, load this rank's weights, allocate the cache; returns the KV address."""
        torch.set_num_threads(spec.torch_threads)
        device = "cuda:0" if spec.device == "cuda" else spec.device  # Ray shows one GPU as 0
        store = self._store(init_method, spec.collective_timeout_s) if self.world_size > 1 else None
        comm = EPComm.init(
            self.rank, self.world_size, init_method, device, spec.collective_timeout_s, store=store
        )
        runner = EPModelRunner(spec.arch, spec.weight_source(), spec.placement, comm, device, spec.dtype)
        cache = runner.allocate_kv_cache(spec.engine.num_blocks, spec.engine.block_size)
        self.loop = LoopThread(name=f"moeplane-kv-rank{self.rank}")
        transport = make_transport(spec)
        self.loop.run(transport.start())
        self._expiry = self.loop.submit(run_expiry(transport))
        self.engine = RankEngine(spec.engine, runner, cache, spec.load_tokenizer(), transport, self.loop)
        return transport.address

    @ray.method(concurrency_group=LIVENESS_GROUP)
    def ping(self) -> RankIdentity:
        """The liveness probe: answered on its own thread, whatever the step loop is doing."""
        return RankIdentity(os.getpid(), ray.get_runtime_context().get_node_id())

    def _engine(self) -> RankEngine:
        if self.engine is None:
            raise RuntimeError(f"rank {self.rank} has not started")
        return self.engine

    def step(self, inp: StepInput) -> StepResult:
        return self._engine().step(inp)

    def stats(self) -> RankStats:
        return self._engine().stats()

    def check_invariants(self) -> None:
        self._engine().check_invariants()

    def take_expert_load(self) -> torch.Tensor:
        """Rows per local expert slot per MoE layer since the last call (for EPLB), on the CPU."""
        return self._engine().runner.take_expert_load().cpu()

    def set_placement(self, placement: Placement) -> None:
        """Reload this rank's experts; the controller calls it on every rank between two steps."""
        self._engine().runner.set_placement(placement)

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None and self.loop is not None:
            self._expiry.cancel()
            if engine.transport is not None:
                self.loop.run(engine.transport.close(), timeout_s=15)
            engine.runner.comm.close()
        if self._store_listener is not None:
            self._store_listener.close()
            self._store_listener = None
        if self.loop is not None:
            self.loop.close()
            self.loop = None
