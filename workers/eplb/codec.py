"""Placements and count matrices as bytes and JSON, for Redis, ConfigMaps and files.

Binary form (`moeplane.bus.eplb`, which torch-free readers use): a one-line JSON header, a newline,
then the raw little-endian int64 matrix; a [58, 288] placement is 134 KB raw.
JSON form: nested lists, for humans and ConfigMaps.
"""

from __future__ import annotations

from typing import Any

import torch
from moeplane.workers.placement import Placement, PlacementError

from moeplane.bus import eplb as bus_eplb
from moeplane.bus.eplb import CodecError as CodecError


def encode_matrix(matrix: torch.Tensor, **header: Any) -> bytes:
    """[L, N] integer tensor -> header line + raw int64 bytes (`moeplane.bus.eplb`'s form)."""
    if matrix.dim() != 2:
        raise CodecError(f"expected a 2-D matrix, got shape {tuple(matrix.shape)}")
    return bus_eplb.encode_matrix(matrix.detach().to(device="cpu", dtype=torch.int64).numpy(), **header)


def decode_matrix(data: bytes) -> tuple[torch.Tensor, dict[str, Any]]:
    """Inverse of `encode_matrix`: ([L, N] int64 tensor, header)."""
    array, head = bus_eplb.decode_matrix(data)
    return torch.from_numpy(array), head


def encode_placement(placement: Placement) -> bytes:
    return encode_matrix(placement.phy2log, version=placement.version, num_logical=placement.num_logical)


def decode_placement(data: bytes) -> Placement:
    phy2log, head = decode_matrix(data)
    try:
        return Placement.from_phy2log(phy2log, int(head["num_logical"]), version=int(head["version"]))
    except (KeyError, TypeError, ValueError, PlacementError) as exc:
        raise CodecError(f"not a placement: {exc}") from None


def placement_to_json(placement: Placement) -> dict[str, Any]:
    """{"version", "numLogical", "phy2log": [[...]]}: the ConfigMap / file form."""
    return {
        "version": placement.version,
        "numLogical": placement.num_logical,
        "phy2log": placement.phy2log.tolist(),
    }


def placement_from_json(doc: dict[str, Any]) -> Placement:
    try:
        phy2log = torch.tensor(doc["phy2log"], dtype=torch.int64)
        return Placement.from_phy2log(phy2log, int(doc["numLogical"]), version=int(doc.get("version", 0)))
    except (KeyError, TypeError, ValueError, RuntimeError, PlacementError) as exc:
        raise CodecError(f"not a placement document: {exc}") from None
