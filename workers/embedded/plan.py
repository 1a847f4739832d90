"""What the embedded stack runs, derived from a MoEDeployment (pure: no Ray, no sockets).

`plan_from_deployment` validates the user's manifest (examples/tiny-cpu.yaml by default) as
`moeplane validate` does, resolves its runtime document (`moeplane.api.runtime.resolve_runtime`,
the same document a Kubernetes pod reads) and plans the groups to start on this machine from it:
per pool, its group layout, how many groups, each rank's KV blocks and the placement it starts
on, with the document's scheduler limits. The model is the document's: seeded random weights, or
a checkpoint directory (`spec.model.weights.uri`, with no preset: its config.json names the
architecture) that every rank loads and whose tokenizer the frontend and the ranks use. What is
checked here is only what this machine adds: the CPU, a local checkpoint that exists, at least
one decode group, and a load file given as a path.

`read_manifest` reads the YAML for `moeplane up -f`: a relative `spec.model.weights.uri` or
`spec.model.tokenizer` there means a directory relative to the manifest's folder (a Kubernetes
manifest needs an absolute path, pvc:// or hf://).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from moeplane.api.enums import EplbMode, Role
from moeplane.api.hardware import HardwarePreset
from moeplane.api.layout import GroupLayout
from moeplane.api.locations import LocationKind, parse_location
from moeplane.api.runtime import BYTE_TOKENIZER, EngineDocument, ServingRuntime, resolve_runtime
from moeplane.api.runtime_io import check_engine_document
from moeplane.api.spec import EplbSpec, MoEDeployment, SlaSpec, parse_deployment
from moeplane.api.validation import check_spec
from moeplane.workers.document_view import DocumentView
from moeplane.workers.embedded.defaults import DEFAULT_MANIFEST as DEFAULT_MANIFEST
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.model.checkpoint import resolve_checkpoint
from moeplane.workers.model.tokenizer import load_tokenizer
from moeplane.workers.placement import Placement
from moeplane.workers.runtime import (
    checkpoint_location,
    initial_placement,
    rank_kv_blocks,
    rank_weights,
    scheduler_config,
)
from moeplane.workers.serving.config import SchedulerConfig


class EmbeddedPlanError(ValueError):
    """A manifest the embedded stack cannot run on this machine (the message says which field)."""


@dataclass(frozen=True)
class PoolPlan:
    role: Role
    layout: GroupLayout
    num_groups: int
    num_blocks_per_rank: int
    block_size_tokens: int
    redundant_experts: int = 0
    placement: Placement | None = field(default=None, compare=False)  # None: no groups to place
    min_groups: int = 0  # spec.{role}.minReplicas: the planner's bounds for scale_pool
    max_groups: int = 0  # spec.{role}.maxReplicas, or num_groups when unset

    @property
    def ep_size(self) -> int:
        return self.layout.expert_parallel

    @property
    def num_ranks(self) -> int:
        return self.ep_size * self.num_groups


@dataclass(frozen=True)
class EmbeddedPlan(DocumentView):
    document: EngineDocument  # the runtime document, as a pod of this deployment reads it
    prefill: PoolPlan  # num_groups 0: aggregated serving, decode groups compute prompts
    decode: PoolPlan
    sla: SlaSpec

    @property
    def weights(self) -> int | str:
        """What every rank loads: the random-weights seed, or the checkpoint's location."""
        return rank_weights(self.document)

    @property
    def weights_seed(self) -> int:
        return self.document.model.weights.seed

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint's location (None: random weights); /v1/models' `root`."""
        return checkpoint_location(self.document)

    @property
    def tokenizer(self) -> str:
        """The tokenizer's location (or `bytes`), as the frontend and every rank load it."""
        return self.document.model.tokenizer

    @property
    def serving(self) -> ServingRuntime:
        return self.document.serving

    @property
    def scheduler(self) -> SchedulerConfig:
        return scheduler_config(self.document.serving)

    @property
    def max_model_len(self) -> int:
        return self.document.serving.max_model_len

    @property
    def kv_chunk_bytes(self) -> int:
        return self.document.kv_transfer.chunk_bytes

    @property
    def lease_s(self) -> float:
        return self.document.kv_transfer.lease_seconds

    @property
    def eplb(self) -> EplbSpec:
        return self.document.eplb

    def pool(self, role: Role) -> PoolPlan:
        return self.prefill if role is Role.PREFILL else self.decode


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at `path` as a mapping, with relative checkpoint and tokenizer directories made
    absolute from the manifest's folder (`weights.uri: ./ckpt` next to the manifest)."""
    try:
        obj = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise EmbeddedPlanError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise EmbeddedPlanError(f"manifest {path} is not valid YAML: {exc}") from None
    if not isinstance(obj, dict):
        raise EmbeddedPlanError(f"manifest {path} is not a MoEDeployment mapping")
    model = (obj.get("spec") or {}).get("model")
    if isinstance(model, dict):
        weights = model.get("weights")
        if isinstance(weights, dict):
            weights["uri"] = _from_manifest_dir(weights.get("uri"), path.parent)
        model["tokenizer"] = _from_manifest_dir(model.get("tokenizer"), path.parent)
        if model["tokenizer"] is None:
            del model["tokenizer"]
    return obj


def _from_manifest_dir(location: Any, base_dir: Path) -> Any:
    """A relative directory (no scheme, not absolute, not `bytes`) -> its absolute path."""
    if not isinstance(location, str) or not location or location == BYTE_TOKENIZER:
        return location
    if "://" in location or location.startswith("/"):
        return location
    return os.path.abspath(base_dir / location)  # symlinks kept: the path the user wrote


def load_manifest(path: Path) -> MoEDeployment:
    """Read and validate a MoEDeployment YAML (SpecInvalid lists every problem); relative
    checkpoint directories are the manifest folder's (`read_manifest`)."""
    return parse_deployment(read_manifest(path))


def check_local_model(doc: EngineDocument) -> None:
    """The embedded stack runs on this machine's CPU, and a local checkpoint must be here, with a
    tokenizer that loads; EmbeddedPlanError names the field, before anything starts. (hf:// is read
    from, or fetched into, the Hugging Face cache when the frontend and the ranks load.)"""
    for role in Role:
        if role in doc.pools and doc.pool(role).gpu is not HardwarePreset.CPU:
            raise EmbeddedPlanError(
                f"spec.hardware.gpu is {doc.pool(role).gpu}; the embedded stack runs on this machine's "
                "CPU (gpu: cpu), with a model small enough for it"
            )
    wanted = {"spec.model.weights.uri": checkpoint_location(doc), "spec.model.tokenizer": doc.model.tokenizer}
    for field_path, location in wanted.items():
        if location is None or location == BYTE_TOKENIZER:
            continue
        parsed = parse_location(location)
        if parsed.kind is LocationKind.HF:
            continue
        try:
            resolve_checkpoint(parsed)
            if field_path == "spec.model.tokenizer":
                load_tokenizer(location, doc.model.architecture)
        except ValueError as exc:  # CheckpointError, HFTokenizerError, TokenizerError
            raise EmbeddedPlanError(f"{field_path}: {exc}") from None


def static_load_file(eplb: EplbSpec, base_dir: Path | None) -> Path | None:
    """The static-EPLB load file on this machine (relative paths from `base_dir`, the manifest's
    folder); None unless the mode is static."""
    if eplb.mode is not EplbMode.STATIC or eplb.load_file is None:
        return None
    if eplb.load_configmap is not None:
        raise EmbeddedPlanError(
            f"spec.eplb.loadFile: {eplb.load_file} names a Kubernetes ConfigMap, and the embedded stack "
            "runs without a cluster; give the load file's path (relative to the manifest) instead"
        )
    path = Path(eplb.load_file)
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


def _pool(
    doc: EngineDocument, dep: MoEDeployment, role: Role, groups: int | None, load_file: Path | None
) -> PoolPlan:
    spec = dep.spec.pool(role)
    layout = doc.pool(role)
    num_groups = spec.replicas if groups is None else groups
    placement = None
    if num_groups:
        try:
            placement = initial_placement(doc, role, load_file)
        except EplbError as exc:
            raise EmbeddedPlanError(f"spec.eplb.loadFile: {exc}") from None
    max_groups = spec.max_replicas if spec.max_replicas is not None else num_groups
    return PoolPlan(
        role,
        layout,
        num_groups,
        rank_kv_blocks(doc, role),
        doc.serving.block_size_tokens,
        layout.expert_slots - doc.model.architecture.num_routed_experts,
        placement,
        min_groups=spec.min_replicas,
        max_groups=max(max_groups, num_groups),
    )


def plan_from_deployment(
    dep: MoEDeployment,
    prefill_groups: int | None = None,
    decode_groups: int | None = None,
    max_model_len: int | None = None,
    manifest_dir: Path | None = None,
) -> EmbeddedPlan:
    """The embedded plan; group counts default to each pool's `replicas` (0 prefill = aggregated).

    `max_model_len` overrides spec.serving.maxModelLen (validated like it). `manifest_dir`
    resolves a relative `spec.eplb.loadFile` (default: the working directory). SpecInvalid for a
    manifest `moeplane validate` refuses; EmbeddedPlanError for one this machine cannot run.
    """
    if max_model_len is not None:
        serving = dep.spec.serving.model_copy(update={"max_model_len": max_model_len})
        dep = dep.model_copy(update={"spec": dep.spec.model_copy(update={"serving": serving})})
    check_spec(dep.spec)
    # The document a pod would read, through the reader's own checks (wire form and rules).
    doc = check_engine_document(resolve_runtime(dep).to_wire(), "runtime document")
    check_local_model(doc)
    load_file = static_load_file(doc.eplb, manifest_dir)
    decode = _pool(doc, dep, Role.DECODE, decode_groups, load_file)
    if decode.num_groups < 1:
        raise EmbeddedPlanError("the embedded stack needs at least one decode group (spec.decode.replicas)")
    return EmbeddedPlan(
        document=doc,
        prefill=_pool(doc, dep, Role.PREFILL, prefill_groups, load_file),
        decode=decode,
        sla=dep.spec.sla,
    )
