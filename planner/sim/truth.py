"""The simulator's ground truth, which may differ from the model the planner sizes with.

The planner is handed a `ProfiledModel`; the simulated cluster runs on `GroundTruth`, that model
bent by a `ModelError` the planner is never told about. Errors come in two kinds:

- uniform: every prefill and decode step takes `scale` times the model's (0.7x: the model is
  pessimistic; 1.3x, 1.5x: optimistic);
- shape: the model is right at one point and wrong elsewhere. The batch-dependent part of a decode
  step grows `decode_batch_slope` times as fast as modelled (the step at batch 1 is unchanged);
  prefill of long prompts is slower, by `1 + prefill_long_isl × min(1, isl / 32768)`; the KV cache
  holds `kv_capacity` of the modelled tokens per rank.

The planner's online correction (observed against predicted latency) is what has to absorb these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from moeplane.planner.perf.profile import ProfiledModel

LONG_ISL_TOKENS = 32768.0  # prompts this long or longer get the whole `prefill_long_isl` slowdown


@dataclass(frozen=True)
class ModelError:
    """How the simulated hardware differs from the planner's performance model."""

    name: str = "exact"
    scale: float = 1.0
    decode_batch_slope: float = 1.0
    prefill_long_isl: float = 0.0
    kv_capacity: float = 1.0

    def __post_init__(self) -> None:
        if self.scale <= 0 or self.decode_batch_slope <= 0 or self.prefill_long_isl < 0:
            raise ValueError(
                f"model error {self.name}: scale and decode_batch_slope must be > 0 and "
                f"prefill_long_isl >= 0, got {self.scale}, {self.decode_batch_slope}, {self.prefill_long_isl}"
            )
        if not 0 < self.kv_capacity <= 1:
            raise ValueError(
                f"model error {self.name}: kv_capacity must be in (0, 1], got {self.kv_capacity}"
            )

    @property
    def exact(self) -> bool:
        return (self.scale, self.decode_batch_slope, self.prefill_long_isl, self.kv_capacity) == (
            1.0,
            1.0,
            0.0,
            1.0,
        )


EXACT = ModelError()
# The errors the benchmark replays: uniform scale errors and shape errors.
MODEL_ERRORS: tuple[ModelError, ...] = (
    ModelError("uniform 0.7x", scale=0.7),
    ModelError("uniform 1.3x", scale=1.3),
    ModelError("uniform 1.5x", scale=1.5),
    ModelError("decode ITL grows 1.5x faster with batch", decode_batch_slope=1.5),
    ModelError("prefill up to 1.6x slower at long ISL", prefill_long_isl=0.6),
    ModelError("KV capacity 20% smaller", kv_capacity=0.8),
)


class GroundTruth:
    """Step times and capacities of the simulated hardware: `model` bent by `error`.

    Vectorised like `ProfiledModel` (the simulator's only use): arrays in, arrays out, float64.
    """

    def __init__(self, model: ProfiledModel, error: ModelError = EXACT) -> None:
        self.model, self.error = model, error

    @property
    def dp_ranks(self) -> int:
        return self.model.dp_ranks

    @property
    def gpus_per_group(self) -> int:
        return self.model.gpus_per_group

    @property
    def nodes_per_group(self) -> int:
        return self.model.nodes_per_group

    @property
    def output_tokens_per_step(self) -> float:
        return self.model.output_tokens_per_step

    @property
    def kv_tokens_per_rank(self) -> int:
        return int(self.model.kv_tokens_per_rank * self.error.kv_capacity)

    def prefill_step_s_array(self, tokens_per_rank: np.ndarray, isl_tokens: np.ndarray) -> np.ndarray:
        """[N] seconds of a step of `tokens_per_rank` [N] tokens of `isl_tokens` [N]-long prompts."""
        step = self.model.prefill_step_s_array(tokens_per_rank, isl_tokens) * self.error.scale
        if self.error.prefill_long_isl:
            long = np.minimum(1.0, np.asarray(isl_tokens, dtype=np.float64) / LONG_ISL_TOKENS)
            step = step * (1.0 + self.error.prefill_long_isl * long)
        return step

    def decode_step_s_array(self, batch_per_rank: np.ndarray, context_tokens: np.ndarray) -> np.ndarray:
        """[N] seconds of a step of `batch_per_rank` [N] sequences of `context_tokens` [N] each."""
        step = self.model.decode_step_s_array(batch_per_rank, context_tokens)
        if self.error.decode_batch_slope != 1.0:
            base = self.model.decode_step_s_array(np.ones_like(np.asarray(batch_per_rank)), context_tokens)
            step = base + self.error.decode_batch_slope * (step - base)
        return step * self.error.scale


def attainable(
    isl_tokens: np.ndarray,
    osl_tokens: np.ndarray,
    prefill_floor_s: np.ndarray,
    decode: GroundTruth,
    ttft_ms: float,
    itl_ms: float,
    kv_transfer_s_per_token: float = 0.0,
) -> np.ndarray:
    """[N] bool: requests the SLA can be met for at all on this hardware: alone on an idle rank,
    their own prefill step fits the TTFT target, their KV fits one decode rank, and their mean
    gap between tokens at batch 1 fits the ITL target — the KV transfer after the first token
    counts in it, spread over the request's output. No pool size helps the others (a 100k-token
    prompt on one data-parallel rank takes tens of seconds; its transfer stalls a 2-token
    answer), so they are reported apart."""
    isl = np.asarray(isl_tokens, dtype=np.float64)
    osl = np.asarray(osl_tokens, dtype=np.float64)
    fits = isl + osl <= decode.kv_tokens_per_rank
    step = decode.decode_step_s_array(np.ones_like(isl), isl + osl / 2) / decode.output_tokens_per_step
    gap = step + isl * kv_transfer_s_per_token / np.maximum(osl - 1, 1)
    return fits & (prefill_floor_s * 1e3 <= ttft_ms) & ((osl <= 1) | (gap * 1e3 <= itl_ms))
