"""Protobuf <-> domain conversions of the worker control service (one place for both sides)."""

from __future__ import annotations

from moeplane.protos import worker_control_pb2 as pb
from moeplane.workers.serving.config import Role
from moeplane.workers.serving.logprobs import TokenLogprobs
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
        top_k=p.top_k,
        min_p=p.min_p,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        repetition_penalty=p.repetition_penalty,
        logit_bias=dict(p.logit_bias),
        allowed_token_ids=list(p.allowed_token_ids),
        min_tokens=p.min_tokens,
        stop_token_ids=list(p.stop_token_ids),
        include_stop_str_in_output=p.include_stop_str_in_output,
        keep_special_tokens=not p.skip_special_tokens,
        output_offset=p.output_offset,
    )
    if p.seed is not None:
        msg.seed = p.seed % 2**64  # int64 as uint64, two's complement
    if p.logprobs is not None:
        msg.logprobs = p.logprobs
    if p.prompt_logprobs is not None:
        msg.prompt_logprobs = p.prompt_logprobs
    return msg


def sampling_from_pb(msg: pb.SamplingParams) -> SamplingParams:
    """Raises EngineRequestError naming the field. top_p 0 and repetition_penalty 0 (unset) mean 1.

    float fields travel as float32; they are rounded back to the nearest short decimal so that 0.1
    stays 0.1 and range checks see the value the client sent."""
    seed = None
    if msg.HasField("seed"):
        seed = msg.seed - 2**64 if msg.seed >= 2**63 else msg.seed
    return SamplingParams(
        temperature=_f32(msg.temperature),
        top_p=_f32(msg.top_p) or 1.0,
        top_k=msg.top_k,
        min_p=_f32(msg.min_p),
        presence_penalty=_f32(msg.presence_penalty),
        frequency_penalty=_f32(msg.frequency_penalty),
        repetition_penalty=_f32(msg.repetition_penalty) or 1.0,
        logit_bias=tuple(sorted((t, _f32(b)) for t, b in msg.logit_bias.items())),
        allowed_token_ids=tuple(msg.allowed_token_ids),
        seed=seed,
        max_tokens=msg.max_tokens,
        min_tokens=msg.min_tokens,
        stop=tuple(msg.stop),
        stop_token_ids=tuple(msg.stop_token_ids),
        include_stop_str_in_output=msg.include_stop_str_in_output,
        ignore_eos=msg.ignore_eos,
        skip_special_tokens=not msg.keep_special_tokens,
        logprobs=msg.logprobs if msg.HasField("logprobs") else None,
        prompt_logprobs=msg.prompt_logprobs if msg.HasField("prompt_logprobs") else None,
        output_offset=msg.output_offset,
    )


def _f32(value: float) -> float:
    """A float32 from the wire as the shortest decimal that rounds to it (0.1f -> 0.1)."""
    return float(f"{value:.7g}")


def logprobs_to_pb(lp: TokenLogprobs) -> pb.TokenLogprobs:
    return pb.TokenLogprobs(
        token_id=lp.token_id, logprob=lp.logprob, rank=lp.rank,
        top_token_ids=[t for t, _ in lp.top], top_logprobs=[v for _, v in lp.top],
    )


def logprobs_from_pb(msg: pb.TokenLogprobs) -> TokenLogprobs:
    top = tuple(zip(msg.top_token_ids, msg.top_logprobs, strict=True))
    return TokenLogprobs(msg.token_id, msg.logprob, msg.rank, top)


def stop_reason_to_pb(reason: str | int | None) -> pb.StopReason | None:
    if reason is None:
        return None
    return pb.StopReason(stop_str=reason) if isinstance(reason, str) else pb.StopReason(token_id=reason)


def stop_reason_from_pb(msg: pb.StopReason) -> str | int | None:
    kind = msg.WhichOneof("kind")
    return None if kind is None else getattr(msg, kind)
