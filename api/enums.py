"""Enums of the API: roles, modes and kinds on the wire (values are what manifests spell)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """The two pools of a disaggregated deployment."""

    PREFILL = "prefill"
    DECODE = "decode"


class WeightsFormat(StrEnum):
    SAFETENSORS = "safetensors"  # Hugging Face DeepSeek-V3 tensor names; each EP rank reads its experts.
    RANDOM = "random"  # Seeded random initialisation: the tiny demo and tests.


class EplbMode(StrEnum):
    OFF = "off"  # The default placement (expert e on slot e), no rebalancing.
    STATIC = "static"  # One placement computed at start from `loadFile`.
    ONLINE = "online"  # Measured load windows drive periodic rebalancing.


class EplbAlgorithm(StrEnum):
    """How a load becomes a placement (`spec.eplb.algorithm`, `moeplane eplb-plan --algorithm`,
    `workers/eplb/rebalance.rebalance`)."""

    AUTO = "auto"  # moeplane's own policy (the default).
    HIERARCHICAL = "hierarchical"  # DeepSeek baseline: groups to nodes, replicate in-node, pack GPUs.
    GLOBAL = "global"  # DeepSeek baseline: replicate over all GPUs, then pack.


class KvTransferBackend(StrEnum):
    GRPC = "grpc"  # gRPC streams of raw byte chunks (the default; works everywhere).
    MOONCAKE = "mooncake"  # Mooncake transfer engine: TCP in CI, RDMA in production.


class Predictor(StrEnum):
    CONSTANT = "constant"
    EMA = "ema"
    HOLT = "holt"
    KALMAN = "kalman"
    ARIMA = "arima"


class PerfModelSource(StrEnum):
    ROOFLINE = "roofline"  # Analytic cost model from the hardware preset.
    PROFILE = "profile"  # Curves measured by `moeplane profile` (see `profileFile`).


class LayoutChanges(StrEnum):
    RECOMMEND = "recommend"  # the planner reports the cheapest EP layout; a person applies it
    APPLY = "apply"  # the planner patches the pools' layout itself when it saves enough


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    INVALID = "Invalid"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"
