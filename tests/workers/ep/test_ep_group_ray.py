"""The Ray EPGroup: two rank actors in one gloo group, driven from the test, against the reference."""

from __future__ import annotations

import pytest
import torch
from moeplane.api.presets import model_preset
from moeplane.workers.ep.group import EPGroup, EPGroupError
from moeplane.workers.ep.steps import RankStep
from moeplane.workers.model import SeqStep, build_metadata
from moeplane.workers.model.reference import reference_logits
from moeplane.workers.model.weights import RandomWeights, full_state_dict

pytestmark = pytest.mark.integration

TINY = model_preset("tiny")
BLOCK = 4


def test_ep_group_steps_with_an_idle_rank_and_a_paged_cache(ray_local) -> None:
    group = EPGroup.start(TINY, world_size=2, weights=9, num_cpus_per_rank=0.25, kv_blocks=16,
                          block_size=BLOCK, timeout_s=90)
    try:
        w = full_state_dict(TINY, RandomWeights(TINY, 9))
        a, b = [3, 1, 4, 1, 5, 9], [2, 7, 1, 8, 2, 8, 1]
        # Step 1: rank 0 prefills `a`; rank 1 is idle but joins every collective.
        s1 = RankStep(torch.tensor(a), build_metadata([SeqStep(0, len(a), (0, 1))], BLOCK))
        out1 = group.forward([s1, None])
        assert out1[1].logits.shape == (0, TINY.vocab_size)
        assert (out1[0].logits[0] - reference_logits(TINY, w, torch.tensor(a))[-1]).abs().max() < 1e-5
        nxt = int(out1[0].logits[0].argmax())
        # Step 2: rank 0 decodes from its cache while rank 1 prefills `b`.
        s2a = RankStep(torch.tensor([nxt]), build_metadata([SeqStep(len(a), 1, (0, 1))], BLOCK))
        s2b = RankStep(torch.tensor(b), build_metadata([SeqStep(0, len(b), (5, 6))], BLOCK))
        out2 = group.forward([s2a, s2b])
        ref_a = reference_logits(TINY, w, torch.tensor([*a, nxt]))[-1]
        assert (out2[0].logits[0] - ref_a).abs().max() < 1e-5
        assert (out2[1].logits[0] - reference_logits(TINY, w, torch.tensor(b))[-1]).abs().max() < 1e-5
        # Rank 1 computed expert rows in step 1 although it had no tokens of its own.
        assert int(out1[1].expert_load.sum()) > 0
        assert all(rss > 50 * 2**20 for rss in group.rss_bytes())
        with pytest.raises(EPGroupError, match="got 1 rank batches for a group of 2"):
            group.forward([None])
    finally:
        group.shutdown()
