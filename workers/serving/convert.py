"""Protobuf <-> domain conversions of the worker control service (one place for both sides)."""

from __future__ import annotations

from moeplane.protos import worker_control_pb2 as pb
from moeplane.workers.serving.config import Role
from moeplane.workers.serving.sequence import ErrorKind, FinishReason, SamplingParams

FINISH_TO_PB = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
}
FINISH_FROM_PB = {number: reason for reason, number in FINISH_TO_PB.items()}
ERROR_KIND_TO_PB = {
    None: pb.ERROR_KIND_UNSPECIFIED,
    ErrorKind.INVALID_REQUEST: pb.ERROR_KIND_INVALID_REQUEST,
    ErrorKind.KV_TRANSFER: pb.ERROR_KIND_KV_TRANSFER,
    ErrorKind.INTERNAL: pb.ERROR_KIND_INTERNAL,
    ErrorKind.GROUP_FAILED: pb.ERROR_KIND_GROUP_FAILED,
}
ERROR_KIND_FROM_PB = {number: kind for kind, number in ERROR_KIND_TO_PB.items()}
ROLE_TO_PB = {Role.PREFILL: pb.ROLE_PREFILL, Role.DECODE: pb.ROLE_DECODE}
ROLE_FROM_PB = {number: role for role, number in ROLE_TO_PB.items()}


def sampling_to_pb(p: SamplingParams) -> pb.SamplingParams:
    msg = pb.SamplingParams(
        temperature=p.temperature,
        top_p=p.top_p,
        max_tokens=p.max_tokens,
        stop=list(p.stop),
        ignore_eos=p.ignore_eos,
    )
    if p.seed is not None:
        msg.seed = p.seed
    return msg


def sampling_from_pb(msg: pb.SamplingParams) -> SamplingParams:
    """Raises InvalidRequest naming the field. top_p 0 (unset) means 1."""
    return SamplingParams(
        temperature=msg.temperature,
        top_p=msg.top_p or 1.0,
        seed=msg.seed if msg.HasField("seed") else None,
        max_tokens=msg.max_tokens,
        stop=tuple(msg.stop),
        ignore_eos=msg.ignore_eos,
    )
