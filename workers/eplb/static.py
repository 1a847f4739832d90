"""Static EPLB: a recorded load file in, the initial placement out.

A load file holds [L, E] token counts per MoE layer and logical expert, as JSON (a list of
lists, or an object with a "load" list of lists) or as a torch `.pt` file (a tensor, or a dict
with a "load" tensor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from moeplane.api.arch import ModelArch
from moeplane.api.enums import EplbAlgorithm
from moeplane.workers.eplb.rebalance import check_load, rebalance
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement


def read_load_file(
    path: str | Path, num_layers: int | None = None, num_logical: int | None = None
) -> torch.Tensor:
    """Read a load file as [L, E] float64, checking the shape when L or E is given.

    Raises:
        EplbError: unreadable file, unknown suffix, wrong structure or shape, negative counts.
    """
    path = Path(path)
    if not path.is_file():
        raise EplbError(f"load file {path} does not exist")
    suffix = path.suffix.lower()
    raw: Any
    if suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise EplbError(f"load file {path} is not valid JSON: {exc}") from None
        if isinstance(raw, dict):
            raw = raw.get("load")
        try:
            tensor = torch.tensor(raw, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise EplbError(
                f"load file {path}: 'load' must be a list of equal-length lists of numbers ({exc})"
            ) from None
    elif suffix == ".pt":
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or foreign file
            raise EplbError(f"load file {path} is not a readable torch file: {exc}") from None
        if isinstance(raw, dict):
            raw = raw.get("load")
        if not isinstance(raw, torch.Tensor):
            raise EplbError(f"load file {path} must hold a tensor or a dict with a 'load' tensor")
        tensor = raw
    else:
        raise EplbError(f"load file {path} must end in .json or .pt, not {suffix or 'nothing'}")
    try:
        load = check_load(tensor)
    except EplbError as exc:
        raise EplbError(f"load file {path}: {exc}") from None
    if num_layers is not None and load.shape[0] != num_layers:
        raise EplbError(f"load file {path} has {load.shape[0]} layers, the model has {num_layers} MoE layers")
    if num_logical is not None and load.shape[1] != num_logical:
        raise EplbError(
            f"load file {path} has {load.shape[1]} experts per layer, the model has {num_logical}"
        )
    return load


def static_placement(
    path: str | Path,
    num_physical: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    algorithm: EplbAlgorithm = EplbAlgorithm.AUTO,
    num_layers: int | None = None,
    num_logical: int | None = None,
) -> Placement:
    """The initial placement (version 0) for a recorded load; see `rebalance` for the layout."""
    load = read_load_file(path, num_layers=num_layers, num_logical=num_logical)
    return rebalance(load, num_physical, num_groups, num_nodes, num_gpus, algorithm)


def model_static_placement(
    path: str | Path,
    arch: ModelArch,
    num_physical: int,
    num_nodes: int,
    num_gpus: int,
    algorithm: EplbAlgorithm = EplbAlgorithm.AUTO,
) -> Placement:
    """Version 0 of a pool's placement for `spec.eplb.mode: static`: the load file at `path`,
    checked against `arch` ([num_moe_layers, num_routed_experts]), placed with `algorithm` over
    `num_physical` slots on an EP group of `num_gpus` ranks on `num_nodes` nodes.

    The embedded stack (one node) and a Kubernetes pool's head (`moeplane pool`) both start here.

    Raises:
        EplbError: the file is missing or malformed, its shape is not the model's, or the layout
            does not fit the algorithm.
    """
    return static_placement(
        path, num_physical, arch.n_group, num_nodes, num_gpus, EplbAlgorithm(algorithm),
        num_layers=arch.num_moe_layers, num_logical=arch.num_routed_experts,
    )
