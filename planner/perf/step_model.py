"""What the planner needs to know about one EP group: how long a step takes.

Two sources implement these protocols: `RooflineModel` (analytic, from the presets) and
`ProfiledModel` (curves measured by `moeplane profile`, interpolated). Everything above them —
capacities, sizing, the simulator — sees only these methods.

Units: a *rank* is one attention data-parallel rank of the group (one GPU when attention is
purely data-parallel); `tokens_per_rank` are input tokens a prefill rank runs in one step;
`batch_per_rank` are sequences a decode rank runs in one step.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from moeplane.api.enums import Role


@runtime_checkable
class GroupShape(Protocol):
    @property
    def role(self) -> Role: ...

    @property
    def dp_ranks(self) -> int:
        """Attention data-parallel ranks per group: each owns its requests and KV cache."""
        ...

    @property
    def gpus_per_group(self) -> int: ...

    @property
    def nodes_per_group(self) -> int: ...

    @property
    def kv_tokens_per_rank(self) -> int:
        """KV-cache tokens one DP rank holds."""
        ...


@runtime_checkable
class PrefillStepModel(GroupShape, Protocol):
    def prefill_step_s(self, tokens_per_rank: float, isl_tokens: float) -> float:
        """Seconds of one step in which every rank runs `tokens_per_rank` tokens of prompts
        `isl_tokens` long."""
        ...


@runtime_checkable
class DecodeStepModel(GroupShape, Protocol):
    @property
    def output_tokens_per_step(self) -> float:
        """Tokens a sequence emits per step (above 1 with multi-token prediction)."""
        ...

    def decode_step_s(self, batch_per_rank: float, context_tokens: float) -> float:
        """Seconds of one step in which every rank runs `batch_per_rank` sequences with
        `context_tokens` tokens of KV cache each."""
        ...
