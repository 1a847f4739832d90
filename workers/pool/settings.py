"""What a pool's Ray head needs to run its EP groups, read from the files and environment the operator
gives its pod (pure: files in, a frozen value out; no Ray, no sockets).

- `MOEPLANE_ENGINE_CONFIG`: the deployment's engine.json (model architecture and weights, hardware,
  both pools' group shapes, KV transfer, namespace and deployment);
- `MOEPLANE_PLACEMENT`: the pool's initial placement.json (one `phy2log` row for every MoE layer);
- `MOEPLANE_EPLB_LOAD_FILE` (static EPLB): where the pod sees `spec.eplb.loadFile` (the operator
  mounts a `configmap://NAME/KEY` there); the placement computed from it replaces placement.json;
- `MOEPLANE_ROLE`, `MOEPLANE_POOL`, `MOEPLANE_REVISION`: which pool this head runs;
- `MOEPLANE_REDIS_URL`: the Redis of the worker registry;
- `MOEPLANE_GRPC_TOKEN` (optional): the shared token of every worker gRPC service;
- `MOEPLANE_POD_IP` (optional): the address the groups advertise in the registry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from moeplane.api.arch import ModelArch
from moeplane.api.enums import EplbAlgorithm, EplbMode, Role, WeightsFormat
from moeplane.api.layout import GroupLayout
from moeplane.api.spec import EplbSpec
from moeplane.workers.eplb.static import model_static_placement
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.kv.layout import KVBackend
from moeplane.workers.placement import Placement
from pydantic import ValidationError

from moeplane.bus.keys import DeploymentKeys

BLOCK_SIZE_TOKENS = 16
EPLB_LOAD_FILE_ENV = "MOEPLANE_EPLB_LOAD_FILE"


class PoolSetupError(ValueError):
    """Missing or unusable pool configuration; the message names the variable, file or field."""


@dataclass(frozen=True)
class PoolSettings:
    keys: DeploymentKeys
    role: Role
    pool_name: str
    revision: str
    served_model: str
    arch: ModelArch
    weights: int | Path  # a random-weights seed, or a safetensors checkpoint on the worker nodes
    group: GroupLayout
    placement: Placement | None
    eplb: EplbSpec
    device: str  # "cpu" or "cuda"
    kv_backend: KVBackend
    kv_chunk_bytes: int
    lease_s: float
    redis_url: str
    grpc_token: str | None
    advertise_host: str | None

    @property
    def ep_size(self) -> int:
        return self.group.expert_parallel

    def group_id(self, index: int) -> str:
        """Unique across a rollout: the old and the new RayCluster of a pool run side by side."""
        rev = f"-{self.revision}" if self.revision else ""
        return f"{self.pool_name}{rev}-g{index}"

    def kv_blocks_per_rank(self, cap: int | None = None) -> int:
        """Blocks of `BLOCK_SIZE_TOKENS` tokens that fit the layout's KV memory per GPU."""
        blocks = max(1, self.group.kv_tokens_per_gpu // BLOCK_SIZE_TOKENS)
        return blocks if cap is None else max(1, min(blocks, cap))

    @property
    def security(self) -> GrpcSecurity:
        return GrpcSecurity(token=self.grpc_token)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32


def _require(env: Mapping[str, str], name: str, flag: str | None = None) -> str:
    value = env.get(name, "")
    if not value:
        how = f" or pass {flag}" if flag else ""
        raise PoolSetupError(f"{name} is not set{how}")
    return value


def _read_json(path: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PoolSetupError(f"cannot read the {what} {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise PoolSetupError(f"the {what} {path} is not a JSON object")
    return doc


def _weights(doc: Mapping[str, Any], path: str) -> int | Path:
    try:
        fmt = WeightsFormat(doc.get("format", WeightsFormat.SAFETENSORS.value))
    except ValueError:
        raise PoolSetupError(f"engine config {path}: model.weights.format {doc.get('format')!r}") from None
    if fmt is WeightsFormat.RANDOM:
        return int(doc.get("seed", 0))
    uri = str(doc.get("uri") or "")
    local = uri.removeprefix("file://")
    if not local.startswith("/"):
        raise PoolSetupError(
            f"engine config {path}: model.weights.uri {uri!r}: the workers read a checkpoint from a "
            "local path (file:// or absolute) mounted on every worker node; hf://, s3:// and pvc:// "
            "must be staged there first"
        )
    return Path(local)


def load_placement(path: str, group: GroupLayout, num_moe_layers: int) -> Placement:
    doc = _read_json(path, "placement")
    try:
        row = [int(x) for x in doc["phy2logRow"]]
        num_layers, num_logical = int(doc["numLayers"]), int(doc["numLogicalExperts"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PoolSetupError(f"placement {path}: missing or bad field {exc}") from None
    if len(row) != group.expert_slots or num_layers != num_moe_layers:
        raise PoolSetupError(
            f"placement {path} has {len(row)} slots x {num_layers} layers; the pool's group has "
            f"{group.expert_slots} slots and the model {num_moe_layers} MoE layers"
        )
    phy2log = torch.tensor(row, dtype=torch.int64).expand(num_layers, -1).clone()
    return Placement.from_phy2log(phy2log, num_logical, int(doc.get("version", 0)))


def static_load_path(eplb: EplbSpec, env: Mapping[str, str], engine_path: str) -> tuple[str, str]:
    """(path, where it came from) of the static-EPLB load file this pod reads.

    The operator's `MOEPLANE_EPLB_LOAD_FILE` wins: it is the in-pod path of a mounted ConfigMap
    key. Without it, `eplb.loadFile` must be a path, since only the operator can mount a ConfigMap.
    """
    mounted = env.get(EPLB_LOAD_FILE_ENV, "")
    if mounted:
        return mounted, EPLB_LOAD_FILE_ENV
    if eplb.load_file is None:
        raise PoolSetupError(
            f"engine config {engine_path}: eplb.mode is static but neither eplb.loadFile nor "
            f"{EPLB_LOAD_FILE_ENV} names a load file"
        )
    if eplb.load_configmap is not None:
        raise PoolSetupError(
            f"engine config {engine_path}: eplb.loadFile {eplb.load_file} is a ConfigMap key, which the "
            f"operator mounts into the pod and passes as {EPLB_LOAD_FILE_ENV}; that variable is not set"
        )
    return eplb.load_file, f"engine config {engine_path}: eplb.loadFile"


def static_pool_placement(
    eplb: EplbSpec, arch: ModelArch, group: GroupLayout, env: Mapping[str, str], engine_path: str
) -> Placement:
    """Version 0 of a static-EPLB pool: its load file placed over one EP group of the pool."""
    path, source = static_load_path(eplb, env, engine_path)
    try:
        return model_static_placement(
            path, arch, group.expert_slots, group.nodes_per_group, group.expert_parallel,
            EplbAlgorithm(eplb.algorithm),
        )
    except EplbError as exc:
        where = source if path in str(exc) else f"{source} {path}"
        raise PoolSetupError(f"{where}: {exc}") from None


def load_pool_settings(env: Mapping[str, str]) -> PoolSettings:
    """The settings of the pool this process runs, from the operator's environment (flags are
    merged into `env` by the caller)."""
    engine_path = _require(env, "MOEPLANE_ENGINE_CONFIG", "--engine-config")
    redis_url = _require(env, "MOEPLANE_REDIS_URL", "--redis-url")
    try:
        role = Role(_require(env, "MOEPLANE_ROLE", "--role"))
    except ValueError:
        raise PoolSetupError(
            f"MOEPLANE_ROLE is {env.get('MOEPLANE_ROLE')!r}; expected prefill or decode"
        ) from None
    doc = _read_json(engine_path, "engine config")
    try:
        model = doc["model"]
        arch = ModelArch.model_validate(model["architecture"])
        group = GroupLayout.model_validate(doc["pools"][role.value])
        keys = DeploymentKeys(doc["namespace"], doc["deployment"])
        hardware = doc["hardware"]["name"]
        kv = doc.get("kvTransfer", {})
        weights = _weights(model["weights"], engine_path)
        eplb = EplbSpec.model_validate(doc.get("eplb", {}))
    except KeyError as exc:
        raise PoolSetupError(f"engine config {engine_path} has no {exc.args[0]!r}") from None
    except ValidationError as exc:
        raise PoolSetupError(f"engine config {engine_path}: {exc}") from None
    if group.attention_tp_size != 1 or group.attention_dp_size != group.expert_parallel:
        raise PoolSetupError(
            f"engine config {engine_path}: pools.{role.value}: the workers run data-parallel attention "
            f"on every rank (attentionTpSize 1, attentionDpSize = expertParallel); got "
            f"attentionTpSize {group.attention_tp_size}, attentionDpSize {group.attention_dp_size}, "
            f"expertParallel {group.expert_parallel}"
        )
    num_moe_layers = arch.num_layers - arch.first_k_dense_layers
    placement_path = env.get("MOEPLANE_PLACEMENT", "")
    placement = load_placement(placement_path, group, num_moe_layers) if placement_path else None
    if EplbMode(eplb.mode) is EplbMode.STATIC:
        # The operator's placement.json is the identity map; the load file's placement replaces it.
        placement = static_pool_placement(eplb, arch, group, env, engine_path)
    try:
        backend = KVBackend(kv.get("backend", KVBackend.GRPC.value))
    except ValueError:
        raise PoolSetupError(
            f"engine config {engine_path}: kvTransfer.backend {kv.get('backend')!r} is not grpc or mooncake"
        ) from None
    chunk_bytes = int(kv.get("chunkBytes", 512 * 1024))
    lease_s = float(kv.get("leaseSeconds", 30.0))
    if not math.isfinite(lease_s) or lease_s <= 0:
        raise PoolSetupError(
            f"engine config {engine_path}: kvTransfer.leaseSeconds must be > 0, got {lease_s}"
        )
    pool_name = env.get("MOEPLANE_POOL") or f"{keys.deployment}-{role.value}"
    return PoolSettings(
        keys=keys,
        role=role,
        pool_name=pool_name,
        revision=env.get("MOEPLANE_REVISION", ""),
        served_model=model.get("servedModelName") or keys.deployment,
        arch=arch,
        weights=weights,
        group=group,
        placement=placement,
        eplb=eplb,
        device="cpu" if hardware == "cpu" else "cuda",
        kv_backend=backend,
        kv_chunk_bytes=chunk_bytes,
        lease_s=lease_s,
        redis_url=redis_url,
        grpc_token=env.get("MOEPLANE_GRPC_TOKEN") or None,
        advertise_host=env.get("MOEPLANE_POD_IP") or None,
    )
