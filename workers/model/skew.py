"""Skewed routing: raise the router's correction bias of chosen experts, over any weight source.

DeepSeek-V3's router picks experts by sigmoid score + `e_score_correction_bias` (the bias steers
the choice, never the routing weights). Adding a constant to some experts' bias makes the router
prefer them: a controlled hot-expert load for load tests, EPLB experiments and demos, on any
checkpoint. It is a `WeightSource`, so every rank and the single-process reference see the same
model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from moeplane.api.arch import ModelArch, RouterScoring
from moeplane.workers.model.weights import WeightError, WeightSource

_BIAS_SUFFIX = ".mlp.gate.e_score_correction_bias"


@dataclass(frozen=True)
class RoutingSkew:
    """Which experts to favour, and by how much.

    Attributes:
        hot_experts: logical expert ids whose bias is raised in every MoE layer.
        bias: added to those experts' correction bias (sigmoid scores lie in (0, 1), so about 1.0
            makes them win nearly every token's top-k).
    """

    hot_experts: tuple[int, ...]
    bias: float = 1.0

    def check(self, arch: ModelArch) -> None:
        if arch.scoring is not RouterScoring.SIGMOID:
            raise WeightError(
                f"routing skew needs a router with a correction bias (sigmoid scoring); "
                f"{arch.name} uses {arch.scoring} scoring"
            )
        if not self.hot_experts:
            raise WeightError("routing skew: hot_experts is empty")
        bad = [e for e in self.hot_experts if not 0 <= e < arch.num_routed_experts]
        if bad:
            raise WeightError(
                f"routing skew: hot_experts {bad} outside the {arch.num_routed_experts} routed experts"
            )


class SkewedWeights:
    """`source` with `skew` applied to every MoE layer's router bias (picklable, like its source)."""

    def __init__(self, source: WeightSource, arch: ModelArch, skew: RoutingSkew) -> None:
        skew.check(arch)
        self.source, self.skew = source, skew

    def get(self, name: str) -> torch.Tensor:
        tensor = self.source.get(name)
        if not name.endswith(_BIAS_SUFFIX):
            return tensor
        out = tensor.clone()
        out[list(self.skew.hot_experts)] += self.skew.bias
        return out
