"""The MoE router: DeepSeek-V3 sigmoid + bias group-limited top-k, or Qwen3 softmax top-k."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from moeplane.api.arch import ModelArch, RouterScoring
from torch import nn


@dataclass(frozen=True)
class RouterConfig:
    scoring: RouterScoring
    num_experts: int
    top_k: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    norm_topk_prob: bool

    @classmethod
    def from_arch(cls, arch: ModelArch) -> RouterConfig:
        return cls(
            scoring=arch.scoring,
            num_experts=arch.num_routed_experts,
            top_k=arch.num_experts_per_tok,
            n_group=arch.n_group,
            topk_group=arch.topk_group,
            routed_scaling_factor=arch.routed_scaling_factor,
            norm_topk_prob=arch.norm_topk_prob,
        )


def route(
    logits: torch.Tensor, bias: torch.Tensor | None, cfg: RouterConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick each token's routed experts and their weights.

    Args:
        logits: [T, E] fp32 gate logits.
        bias: [E] fp32 correction bias (sigmoid scoring only); it steers the choice but not the
            weights, as in DeepSeek-V3's aux-loss-free balancing.
    Returns:
        topk_ids: [T, K] int64 logical expert ids.
        topk_weights: [T, K] fp32, normalised when `norm_topk_prob`, times the routed scaling factor.
    """
    num_tokens = logits.shape[0]
    if cfg.scoring is RouterScoring.SOFTMAX:
        scores = torch.softmax(logits.float(), dim=-1)
        weights, ids = torch.topk(scores, cfg.top_k, dim=-1)
        if cfg.norm_topk_prob:  # Qwen3MoeTopKRouter: no epsilon
            weights = weights / weights.sum(-1, keepdim=True)
        return ids, weights * cfg.routed_scaling_factor
    scores = logits.float().sigmoid()
    choice = scores if bias is None else scores + bias.float().unsqueeze(0)
    if cfg.n_group > 1:
        per_group = cfg.num_experts // cfg.n_group
        grouped = choice.view(num_tokens, cfg.n_group, per_group)
        group_scores = grouped.topk(min(2, per_group), dim=-1).values.sum(-1)  # [T, n_group]
        group_idx = group_scores.topk(cfg.topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
        expert_mask = group_mask.unsqueeze(-1).expand(-1, -1, per_group)
        expert_mask = expert_mask.reshape(num_tokens, cfg.num_experts)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
    ids = torch.topk(choice, cfg.top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    if cfg.norm_topk_prob:  # DeepseekV3TopkRouter: even for top-1
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return ids, weights * cfg.routed_scaling_factor


class Router(nn.Module):
    """Gate with Hugging Face names: `weight` [E, hidden], `e_score_correction_bias` [E] (sigmoid)."""

    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        self.cfg = RouterConfig.from_arch(arch)
        self.weight = nn.Parameter(torch.empty(arch.num_routed_experts, arch.hidden_size))
        self.e_score_correction_bias: nn.Parameter | None = None
        if arch.scoring is RouterScoring.SIGMOID:
            self.e_score_correction_bias = nn.Parameter(torch.zeros(arch.num_routed_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, hidden] -> (topk_ids [T, K] int64, topk_weights [T, K] fp32)."""
        logits = F.linear(x.float(), self.weight.float())
        return route(logits, self.e_score_correction_bias, self.cfg)
