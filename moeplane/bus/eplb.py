"""A pool's EPLB state in Redis, as its readers see it (numpy, no torch).

Keys (from `DeploymentKeys`):
- `placement(role)`: a hash with the pool's current placement (`version`, `data`, `at_s`) and what
  the ranks measured under it (`balancedness`, `balancedness_version`, `balancedness_at_s`);
- `expert_load(role, group)`: a hash, one field per rank, each that rank's latest load window.

Binary form of a matrix (placements, load windows): a one-line JSON header, a newline, then the
raw little-endian int64 matrix. The workers (`moeplane.workers.eplb.store`) write these keys with
torch tensors through the same codec; the operator, the planner and the dashboard read them here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from moeplane.api.enums import Role
from moeplane.bus.keys import BALANCEDNESS_FIELD, PLACEMENT_VERSION_FIELD, DeploymentKeys

Int64Matrix = npt.NDArray[np.int64]


class CodecError(ValueError):
    """Bytes or JSON that do not decode to what they claim."""


def encode_matrix(matrix: npt.ArrayLike, **header: Any) -> bytes:
    """[L, N] integer matrix -> header line + raw int64 bytes. Extra header fields must be JSON."""
    array = np.asarray(matrix)
    if array.ndim != 2:
        raise CodecError(f"expected a 2-D matrix, got shape {tuple(array.shape)}")
    body = np.ascontiguousarray(array, dtype="<i8").tobytes()
    head = {**header, "shape": list(array.shape), "dtype": "int64"}
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + body


def decode_matrix(data: bytes) -> tuple[Int64Matrix, dict[str, Any]]:
    """Inverse of `encode_matrix`: ([L, N] int64 array (writable), header)."""
    head_raw, sep, body = data.partition(b"\n")
    if not sep:
        raise CodecError("missing header line")
    try:
        head = json.loads(head_raw)
        rows, cols = (int(x) for x in head["shape"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CodecError(f"bad header {head_raw[:200]!r}: {exc}") from None
    if head.get("dtype") != "int64" or len(body) != rows * cols * 8:
        raise CodecError(
            f"body holds {len(body)} bytes, expected {rows * cols * 8} for int64 [{rows}, {cols}]"
        )
    return np.frombuffer(body, dtype="<i8").reshape(rows, cols).astype(np.int64), head


@dataclass(frozen=True)
class PoolEplbStatus:
    """A pool's EPLB state as the operator and the planner read it.

    Attributes:
        placement_version: the published placement (the one the pool serves with or is moving to).
        balancedness: mean over MoE layers of mean / max per-GPU tokens, measured by the ranks over
            their last windows; None before the first measurement.
        balancedness_version: the placement those windows counted under (None: no measurement).
        balancedness_at_s: Unix time of the measurement.
    """

    placement_version: int | None
    balancedness: float | None
    balancedness_version: int | None
    balancedness_at_s: float | None


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def read_status(client: Any, keys: DeploymentKeys, role: Role) -> PoolEplbStatus:
    """The pool's placement version and measured balancedness (a sync redis client)."""
    names = [PLACEMENT_VERSION_FIELD, BALANCEDNESS_FIELD, "balancedness_version", "balancedness_at_s"]
    fields = client.hmget(keys.placement(Role(role).value), names)
    version, value, measured_version, at_s = (None if f is None else as_bytes(f).decode() for f in fields)
    return PoolEplbStatus(
        placement_version=None if version is None else int(version),
        balancedness=None if value is None else float(value),
        balancedness_version=None if measured_version is None else int(measured_version),
        balancedness_at_s=None if at_s is None else float(at_s),
    )


def write_status(
    client: Any, keys: DeploymentKeys, role: Role, balancedness: float, placement_version: int,
    now_s: float | None = None,
) -> None:
    """Record the pool's measured balancedness under `placement_version` (a sync redis client)."""
    at_s = time.time() if now_s is None else now_s
    client.hset(
        keys.placement(Role(role).value),
        mapping={
            BALANCEDNESS_FIELD: repr(float(balancedness)),
            "balancedness_version": str(int(placement_version)),
            "balancedness_at_s": repr(at_s),
        },
    )


def read_logical_load(client: Any, keys: DeploymentKeys, role: Role) -> Int64Matrix | None:
    """[layers, experts] token counts summed over every rank window of every group of the pool
    (None when no rank has published one). Windows whose shape differs from the first are skipped."""
    prefix = keys.expert_load(Role(role).value, "")
    total: Int64Matrix | None = None
    for key in client.scan_iter(match=prefix + "*", count=500):
        for value in client.hgetall(key).values():
            try:
                both, head = decode_matrix(as_bytes(value))
                logical = both[:, : int(head["num_logical"])]
            except (CodecError, KeyError, TypeError, ValueError):
                continue
            if total is None:
                total = logical.copy()
            elif total.shape == logical.shape:
                total += logical
    return total
