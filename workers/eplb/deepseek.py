"""Baselines: DeepSeek's published EPLB policies, re-implemented from their description.

Hierarchical (used when the node count divides the group count): pack expert groups onto nodes
so node loads are even, replicate hot experts within each node, then pack the node's replicas
onto its GPUs. Global: replicate over all slots, then pack onto all GPUs (hierarchical with one
group and one node). Packing is longest-processing-time with equal items per bin.

The original loops over layers in Python; here every stage is batched over layers (and nodes) so
that the baseline's planning time is a fair yardstick, not a straw man.
"""

from __future__ import annotations

import torch
from moeplane.workers.eplb.packing import expand_replicas, lpt_pack, replica_counts
from moeplane.workers.eplb.types import EplbLayout


def node_experts(node_groups: torch.Tensor, group_size: int) -> torch.Tensor:
    """Logical experts of each node, group by group.

    Args:
        node_groups: [L, N, G/N] int64 groups on each node.
    Returns:
        [L, N, E/N] int64 logical expert ids (the node-local "mlog" -> logical map).
    """
    num_layers, num_nodes, _ = node_groups.shape
    experts = node_groups.unsqueeze(-1) * group_size + torch.arange(group_size)
    return experts.view(num_layers, num_nodes, -1)


def deepseek_hierarchical(load: torch.Tensor, layout: EplbLayout) -> torch.Tensor:
    """DeepSeek's hierarchical policy.

    Args:
        load: [L, E] float64 tokens per logical expert.
        layout: with num_groups a multiple of num_nodes.
    Returns:
        phy2log: [L, R] int64; slots of GPU g are g*k .. g*k+k-1 (k = R / num_gpus).
    """
    num_layers, num_logical = load.shape
    groups, nodes = layout.num_groups, layout.num_nodes
    group_size = num_logical // groups

    # Stage 1: expert groups onto nodes, balancing the nodes' total load.
    group_load = load.view(num_layers, groups, group_size).sum(-1)
    group_order = torch.argsort(group_load, dim=-1, descending=True, stable=True)
    held = lpt_pack(group_load.gather(1, group_order), nodes)
    node_groups = group_order.gather(1, held.flatten(1)).view(num_layers, nodes, groups // nodes)
    mlog2log = node_experts(node_groups, group_size)  # [L, N, E/N]

    # Stage 2: replicate hot experts within each node.
    local_load = load.gather(1, mlog2log.flatten(1)).view(num_layers * nodes, -1)
    counts = replica_counts(local_load, layout.num_physical // nodes)
    ids, w = expand_replicas(local_load, counts)

    # Stage 3: the node's replicas onto its GPUs.
    held = lpt_pack(w, layout.num_gpus // nodes)
    local = ids.gather(1, held.flatten(1)).view(num_layers, nodes, -1)
    return mlog2log.gather(2, local).view(num_layers, layout.num_physical)


def deepseek_global(load: torch.Tensor, layout: EplbLayout) -> torch.Tensor:
    """DeepSeek's global policy: replicate over every slot, then pack onto every GPU.

    Args:
        load: [L, E] float64. Returns phy2log [L, R] int64 as `deepseek_hierarchical`.
    """
    flat = EplbLayout(
        num_layers=layout.num_layers,
        num_logical=layout.num_logical,
        num_physical=layout.num_physical,
        num_groups=1,
        num_nodes=1,
        num_gpus=layout.num_gpus,
    )
    return deepseek_hierarchical(load, flat)
