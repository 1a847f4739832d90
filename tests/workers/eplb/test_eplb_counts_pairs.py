"""Replica counts for two slots per GPU: the merge-based scoring, the local search, and the
decode-shaped win over DeepSeek's greedy counts that it buys."""

from __future__ import annotations

import pytest
import torch
from moeplane.api.enums import EplbAlgorithm
from moeplane.workers.eplb.counts import _moved_peaks, _pair_peaks, _pair_start, pair_counts
from moeplane.workers.eplb.metrics import moved_slots, placement_balancedness
from moeplane.workers.eplb.packing import expand_replicas, replica_counts
from moeplane.workers.eplb.rebalance import rebalance

from .loads import drifted, zipf_load

pytestmark = pytest.mark.unit

# DeepSeek-V3's decode layout: EP144 over 18 nodes, 256 experts + 32 redundant, 2 slots per GPU.
DECODE = (288, 8, 18, 144)


def outer_pair_peak(weight: torch.Tensor, counts: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """Reference by sorting: the hottest of the `num_pairs` outermost pairs. [D] float64."""
    w = expand_replicas(weight, counts)[1]
    pairs = w[:, : w.shape[1] // 2] + w[:, w.shape[1] // 2 :].flip(-1)
    return pairs[:, :num_pairs].amax(-1)


@pytest.mark.parametrize("num_pairs", [3, 8])
@pytest.mark.parametrize("seed", range(4))
def test_merged_scores_match_a_full_sort(num_pairs: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    # Small integer loads: many ties between replicas, which the merge must order consistently.
    weight = torch.randint(0, 7, (6, 12), generator=gen).to(torch.float64) * 1.37
    counts = replica_counts(weight, 16)
    ids, w = expand_replicas(weight, counts)
    donor = torch.randint(0, 12, (6, 30), generator=gen)
    recipient = torch.randint(0, 12, (6, 30), generator=gen)
    got = _moved_peaks(weight, counts, ids, w, donor, recipient, num_pairs)
    checked = 0
    for d in range(6):
        for j in range(30):
            giver, taker = int(donor[d, j]), int(recipient[d, j])
            if giver == taker or int(counts[d, giver]) < 2:
                continue
            moved = counts[d : d + 1].clone()
            moved[0, giver] -= 1
            moved[0, taker] += 1
            want = float(outer_pair_peak(weight[d : d + 1], moved, num_pairs)[0])
            assert float(got[d, j]) == pytest.approx(want, rel=1e-5, abs=1e-9), (d, giver, taker)
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("s", [0.6, 1.0, 1.4])
def test_searched_counts_keep_the_slots_and_never_pair_hotter_than_greedy(s: float) -> None:
    load = zipf_load(6, 256, s, seed=3)
    greedy = replica_counts(load, 288)
    searched = pair_counts(load, greedy)
    assert bool((searched >= 1).all())
    assert torch.equal(searched.sum(-1), greedy.sum(-1))
    before = _pair_peaks(expand_replicas(load, greedy)[1])[0]
    after = _pair_peaks(expand_replicas(load, searched)[1])[0]
    assert bool((after <= before).all())
    if s == 0.6:
        # Mild skew leaves freedom: splitting cold experts gives the hot replicas lighter partners.
        assert bool((after < before * 0.99).all()), (after / before).tolist()


def test_an_idle_or_uniform_layer_keeps_its_counts() -> None:
    load = torch.stack([torch.zeros(8, dtype=torch.float64), torch.full((8,), 5.0, dtype=torch.float64)])
    greedy = replica_counts(load, 12)
    assert torch.equal(pair_counts(load, greedy), greedy)


def test_a_rebalance_keeps_the_previous_counts_only_when_they_are_whole_and_no_worse() -> None:
    load = zipf_load(3, 16, 0.6, seed=1)

    def peak_of(counts: torch.Tensor) -> torch.Tensor:
        return _pair_peaks(expand_replicas(load, counts)[1])[0]

    searched = pair_counts(load, replica_counts(load, 24))
    greedy = replica_counts(load, 24)
    ids = expand_replicas(load, greedy)[0]
    prev_local = torch.stack([ids[:, :12], ids[:, 12:].flip(-1)], dim=-1)  # [3, 12 GPUs, 2]
    # A previous placement with the searched counts (a different pairing) is kept ...
    same = expand_replicas(load, searched)[0]
    same_local = torch.stack([same[:, :12], same[:, 12:].flip(-1)], dim=-1)
    same_local[2, 0, 0] = -1  # ... except where it lost a replica to another node: not whole
    kept = _pair_start(load, searched, peak_of(searched), same_local)
    assert torch.equal(kept, searched)
    # Greedy previous counts pair hotter than the searched ones on this load: they lose.
    assert bool(
        (
            _pair_peaks(expand_replicas(load, searched)[1])[0]
            < _pair_peaks(expand_replicas(load, greedy)[1])[0]
        ).all()
    )
    assert torch.equal(_pair_start(load, searched, peak_of(searched), prev_local), searched)
    # Drop a cold expert's replica from the searched counts' previous placement in layer 0 and
    # give it to the hottest: whole, but hotter, so the searched counts win there too.
    worse = searched.clone()
    worse[0, load[0].argmax()] += 1
    cold = int(torch.where(worse[0] >= 2, load[0], float("inf")).argmin())
    worse[0, cold] -= 1
    worse_ids = expand_replicas(load, worse)[0]
    worse_local = torch.stack([worse_ids[:, :12], worse_ids[:, 12:].flip(-1)], dim=-1)
    hotter = (
        _pair_peaks(expand_replicas(load, worse)[1])[0][0]
        > _pair_peaks(expand_replicas(load, searched)[1])[0][0]
    )
    got = _pair_start(load, searched, peak_of(searched), worse_local)
    assert torch.equal(got[0], searched[0] if hotter else worse[0])
    assert torch.equal(got[1:], searched[1:])


def test_ours_beats_deepseek_on_a_decode_shaped_zipf_06_load() -> None:
    physical, groups, nodes, gpus = DECODE
    load = zipf_load(4, 256, 0.6, seed=11)
    ours = placement_balancedness(load, rebalance(load, physical, groups, nodes, gpus), gpus)
    theirs = placement_balancedness(
        load, rebalance(load, physical, groups, nodes, gpus, EplbAlgorithm.GLOBAL), gpus
    )
    assert float(ours.mean()) > float(theirs.mean()) * 1.01, (ours.tolist(), theirs.tolist())
    assert float(ours.min()) > float(theirs.min())


def test_decode_rebalances_stay_ahead_and_move_few_weights() -> None:
    physical, groups, nodes, gpus = DECODE
    load = zipf_load(4, 256, 0.6, seed=12)
    ours_prev = rebalance(load, physical, groups, nodes, gpus)
    base_prev = rebalance(load, physical, groups, nodes, gpus, EplbAlgorithm.GLOBAL)
    ours_moved = base_moved = 0
    for step in range(2):
        load = drifted(load, 0.1, seed=200 + step)
        ours = rebalance(load, physical, groups, nodes, gpus, previous=ours_prev)
        base = rebalance(load, physical, groups, nodes, gpus, EplbAlgorithm.GLOBAL, previous=base_prev)
        ours_bal = placement_balancedness(load, ours, gpus)
        base_bal = placement_balancedness(load, base, gpus)
        assert float(ours_bal.mean()) > float(base_bal.mean())
        ours_moved += int(moved_slots(ours_prev, ours, gpus).sum())
        base_moved += int(moved_slots(base_prev, base, gpus).sum())
        ours_prev, base_prev = ours, base
    assert ours_moved * 2 <= base_moved, (ours_moved, base_moved)
