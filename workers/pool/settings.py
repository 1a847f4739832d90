"""What a pool's Ray head needs to run its EP groups, read from the files and environment the operator
gives its pod (pure: files in, a frozen value out; no Ray, no sockets). The names are
`moeplane.api.podcontract`'s:

- `MOEPLANE_ENGINE_CONFIG`: the deployment's runtime document, engine.json (`api/runtime.py`),
  read with `read_engine_document`, the reader every process uses;
- `MOEPLANE_POOL_LAYOUT`: this pool's group layout, the MoEPool's `spec.layout` (which also shaped
  the pod); without it, engine.json must carry `pools.<role>`;
- `MOEPLANE_EPLB_LOAD_FILE` (static EPLB): where the pod sees `spec.eplb.loadFile` (the operator
  mounts a `configmap://NAME/KEY` there); without it, `eplb.loadFile` must be a path;
- `MOEPLANE_ROLE`, `MOEPLANE_POOL`, `MOEPLANE_REVISION`: which pool this head runs;
- `MOEPLANE_REDIS_URL`: the Redis of the worker registry;
- `MOEPLANE_GRPC_TOKEN` (optional): the shared token of every worker gRPC service;
- `MOEPLANE_POD_IP` (optional): the address the groups advertise in the registry;
- `MOEPLANE_VOLUME_ROOT`, `HF_HOME`: where pvc:// and hf:// checkpoints are mounted; each rank
  resolves the weights' and the tokenizer's location on its own node with its own environment.

The pool starts on `Placement.identity` over its layout's slots, or on its load file's placement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from moeplane.api import podcontract
from moeplane.api.enums import EplbMode, Role
from moeplane.api.layout import GroupLayout
from moeplane.api.podcontract import (
    ENGINE_CONFIG_ENV,
    EPLB_LOAD_FILE_ENV,
    GRPC_TOKEN_ENV,
    POD_IP_ENV,
    POOL_ENV,
    POOL_LAYOUT_ENV,
    REDIS_URL_ENV,
    REVISION_ENV,
    ROLE_ENV,
)
from moeplane.api.runtime import EngineDocument
from moeplane.api.runtime_io import EngineDocumentError, read_engine_document
from moeplane.api.spec import EplbSpec
from moeplane.workers.document_view import DocumentView
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.grpc_security import GrpcSecurity
from moeplane.workers.kv.layout import KVBackend
from moeplane.workers.placement import Placement
from moeplane.workers.runtime import device_of, dtype_of, initial_placement, rank_kv_blocks, rank_weights

__all__ = ["EPLB_LOAD_FILE_ENV", "PoolSettings", "PoolSetupError", "load_pool_settings"]


class PoolSetupError(ValueError):
    """Missing or unusable pool configuration; the message names the variable, file or field."""


@dataclass(frozen=True)
class PoolSettings(DocumentView):
    document: EngineDocument  # with this pool's layout in `pools`
    role: Role
    pool_name: str
    revision: str
    placement: Placement = field(compare=False)
    redis_url: str
    grpc_token: str | None
    advertise_host: str | None
    weights: int | str  # a random-weights seed, or the checkpoint's location (each rank resolves it)

    @property
    def group(self) -> GroupLayout:
        return self.document.pool(self.role)

    @property
    def eplb(self) -> EplbSpec:
        return self.document.eplb

    @property
    def device(self) -> str:
        return device_of(self.group)

    @property
    def dtype(self) -> torch.dtype:
        return dtype_of(self.device)

    @property
    def kv_backend(self) -> KVBackend:
        return self.document.kv_transfer.backend

    @property
    def kv_chunk_bytes(self) -> int:
        return self.document.kv_transfer.chunk_bytes

    @property
    def lease_s(self) -> float:
        return self.document.kv_transfer.lease_seconds

    @property
    def ep_size(self) -> int:
        return self.group.expert_parallel

    def group_id(self, index: int) -> str:
        """Unique across a rollout: the old and the new RayCluster of a pool run side by side."""
        return podcontract.group_id(self.pool_name, self.revision, index)

    def kv_blocks_per_rank(self, cap: int | None = None) -> int:
        """Blocks of the document's block size that fit the layout's KV memory per rank."""
        return rank_kv_blocks(self.document, self.role, cap)

    @property
    def security(self) -> GrpcSecurity:
        return GrpcSecurity(token=self.grpc_token)


def _require(env: Mapping[str, str], name: str, flag: str | None = None) -> str:
    value = env.get(name, "")
    if not value:
        how = f" or pass {flag}" if flag else ""
        raise PoolSetupError(f"{name} is not set{how}")
    return value


def static_load_path(eplb: EplbSpec, env: Mapping[str, str], engine_path: str) -> tuple[str, str]:
    """(path, where it came from) of the static-EPLB load file this pod reads.

    The operator's `MOEPLANE_EPLB_LOAD_FILE` wins: it is the in-pod path of a mounted ConfigMap
    key. Without it, `eplb.loadFile` must be a path, since only the operator can mount a ConfigMap.
    """
    mounted = env.get(EPLB_LOAD_FILE_ENV, "")
    if mounted:
        return mounted, EPLB_LOAD_FILE_ENV
    if eplb.load_file is None:  # the document's rules refuse it; a flag-less test may not
        raise PoolSetupError(f"engine config {engine_path}: eplb.loadFile: is required when mode is static")
    if eplb.load_configmap is not None:
        raise PoolSetupError(
            f"engine config {engine_path}: eplb.loadFile {eplb.load_file} is a ConfigMap key, which the "
            f"operator mounts into the pod and passes as {EPLB_LOAD_FILE_ENV}; that variable is not set"
        )
    return eplb.load_file, f"engine config {engine_path}: eplb.loadFile"


def pool_placement(doc: EngineDocument, role: Role, env: Mapping[str, str], engine_path: str) -> Placement:
    """Version 0 of the pool: the identity placement, or (static EPLB) its load file's."""
    if doc.eplb.mode is not EplbMode.STATIC:
        return initial_placement(doc, role)
    path, source = static_load_path(doc.eplb, env, engine_path)
    try:
        return initial_placement(doc, role, path)
    except EplbError as exc:
        where = source if path in str(exc) else f"{source} {path}"
        raise PoolSetupError(f"{where}: {exc}") from None


def load_pool_settings(env: Mapping[str, str]) -> PoolSettings:
    """The settings of the pool this process runs, from the operator's environment (flags are
    merged into `env` by the caller)."""
    engine_path = _require(env, ENGINE_CONFIG_ENV, "--engine-config")
    redis_url = _require(env, REDIS_URL_ENV, "--redis-url")
    try:
        role = Role(_require(env, ROLE_ENV, "--role"))
    except ValueError:
        raise PoolSetupError(f"{ROLE_ENV} is {env.get(ROLE_ENV)!r}; expected prefill or decode") from None
    try:
        doc = read_engine_document(engine_path, role=role, pool_layout=env.get(POOL_LAYOUT_ENV) or None)
    except EngineDocumentError as exc:
        raise PoolSetupError(str(exc)) from None
    return PoolSettings(
        document=doc,
        role=role,
        pool_name=env.get(POOL_ENV) or f"{doc.deployment}-{role.value}",
        revision=env.get(REVISION_ENV, ""),
        placement=pool_placement(doc, role, env, engine_path),
        redis_url=redis_url,
        grpc_token=env.get(GRPC_TOKEN_ENV) or None,
        advertise_host=env.get(POD_IP_ENV) or None,
        weights=rank_weights(doc),
    )
