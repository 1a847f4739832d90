"""What the worker processes derive from the runtime document (`moeplane.api.runtime`), in one place
for `moeplane pool` (`pool/settings.py`, `pool/plan.py`), `moeplane frontend` and `moeplane up`
(`embedded/plan.py`): the scheduler limits, the frontend's queue and request limits, the KV blocks
of a rank, the device and dtype, the weights every rank loads, and the placement a pool starts on.
The tokenizer is the document's `model.tokenizer`, loaded by
the frontend and every rank alike (`load_tokenizer`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from moeplane.api.enums import EplbAlgorithm, EplbMode, Role, WeightsFormat
from moeplane.api.hardware import HardwarePreset
from moeplane.api.layout import GroupLayout
from moeplane.api.runtime import EngineDocument, ServingRuntime, kv_blocks_per_rank
from moeplane.workers.eplb.static import model_static_placement
from moeplane.workers.placement import Placement
from moeplane.workers.serving.config import SchedulerConfig
from moeplane.workers.serving.limits import ServingLimits


def scheduler_config(serving: ServingRuntime) -> SchedulerConfig:
    """One rank's batching limits (spec.serving)."""
    return SchedulerConfig(
        max_num_batched_tokens=serving.max_num_batched_tokens,
        max_num_seqs=serving.max_num_seqs,
        max_model_len=serving.max_model_len,
    )


def serving_limits(serving: ServingRuntime, request_timeout_s: float | None = None) -> ServingLimits:
    """spec.serving as the frontend and ranks take it: the batching limits, the admission queue
    (maxQueuedRequests, queueTimeoutSeconds) and the request timeout (requestTimeoutSeconds, or
    `request_timeout_s` when a flag overrides it; the queue's wait is then capped by it)."""
    timeout_s = request_timeout_s or serving.request_timeout_seconds
    return ServingLimits(
        max_num_batched_tokens=serving.max_num_batched_tokens,
        max_num_seqs=serving.max_num_seqs,
        max_model_len=serving.max_model_len,
        max_queued_requests=serving.max_queued_requests,
        queue_timeout_s=min(serving.queue_timeout_seconds, timeout_s),
        request_timeout_s=timeout_s,
    )


def rank_kv_blocks(doc: EngineDocument, role: Role, cap: int | None = None) -> int:
    """KV blocks of one rank of pool `role`, at most `cap` when given (a test's smaller cache)."""
    blocks = kv_blocks_per_rank(doc.pool(role), doc.serving.block_size_tokens)
    return blocks if cap is None else max(1, min(blocks, cap))


def device_of(layout: GroupLayout) -> str:
    """"cpu" for the cpu preset, else "cuda"."""
    return "cpu" if layout.gpu is HardwarePreset.CPU else "cuda"


def dtype_of(device: str) -> torch.dtype:
    return torch.bfloat16 if device == "cuda" else torch.float32


def initial_placement(doc: EngineDocument, role: Role, load_file: Path | str | None = None) -> Placement:
    """Version 0 of pool `role`'s placement over its layout's expert slots.

    Modes off and online start from expert e on slot e (the extra slots replicate the lowest ids
    until the first rebalance); static places `load_file` (the caller finds it: a mounted
    ConfigMap key, a path) with `eplb.algorithm` over one group of the layout. EplbError names
    the file when it cannot be read or placed.
    """
    arch, layout = doc.model.architecture, doc.pool(role)
    if doc.eplb.mode is not EplbMode.STATIC:
        return Placement.identity(arch.num_moe_layers, arch.num_routed_experts, layout.expert_slots)
    if load_file is None:
        raise ValueError("static EPLB needs its load file")
    return model_static_placement(
        load_file, arch, layout.expert_slots, layout.nodes_per_group, layout.expert_parallel,
        EplbAlgorithm(doc.eplb.algorithm),
    )


def checkpoint_location(doc: EngineDocument) -> str | None:
    """The checkpoint's location as the document states it (safetensors weights), else None."""
    weights = doc.model.weights
    return weights.uri if weights.format is WeightsFormat.SAFETENSORS else None


def rank_weights(doc: EngineDocument) -> int | str:
    """What every rank of every pool loads (`RankSpec.weights`): the random-weights seed, or the
    checkpoint's location, which each rank resolves on its own node (`resolve_checkpoint`: a
    local path, pvc:// under `MOEPLANE_VOLUME_ROOT`, hf:// from the Hugging Face cache)."""
    location = checkpoint_location(doc)
    return doc.model.weights.seed if location is None else location
