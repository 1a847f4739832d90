"""Choosing the EP width: `moeplane plan --sla` and the search behind it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from moeplane.api.enums import Role
from moeplane.planner.layouts import Workload, advise, balancedness_for, layout_patch
from moeplane.planner.spec_adapter import config_from_spec

from moeplane.cli import main

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "deepseek-r1.yaml"


def test_the_search_finds_a_valid_cheapest_layout_per_pool(r1_spec) -> None:
    config = config_from_spec(r1_spec)
    advice = advise(r1_spec, config, Workload(1200, 2000, 2000, 0.6, 0.6))
    arch_slots = 256
    for role in Role:
        choice = advice.pool(role)
        best = choice.best
        assert best is not None and best.groups is not None and best.gpus is not None
        assert (arch_slots + best.redundant_experts) % best.expert_parallel == 0
        assert best.expert_parallel <= 8 or best.expert_parallel % 8 == 0
        # Nothing cheaper was passed over, and the runner-ups say why they lose.
        assert choice.current.gpus is None or best.gpus <= choice.current.gpus
        assert choice.runners_up and all(why for _, why in choice.runners_up)
        for c, _ in choice.runners_up:
            assert c.gpus is None or c.gpus >= best.gpus
    # EP8 holds 36 of R1's expert slots per H800: it cannot fit, and says so.
    invalid = [why for c, why in advice.prefill.runners_up if c.expert_parallel == 8]
    assert invalid and "does not fit in GPU memory" in invalid[0]
    assert advice.gpu_hours_saved_per_hour == (advice.gpus_now or 0) - (advice.gpus_best or 0)
    patch = layout_patch(advice)
    for role, p in patch.items():
        assert set(p) == {"expertParallel", "redundantExperts", "dataParallelAttention", "replicas"}, role


def test_more_load_needs_more_gpus_and_spare_slots_balance_better(r1_spec) -> None:
    config = config_from_spec(r1_spec)
    light = advise(r1_spec, config, Workload(200, 2000, 2000))
    heavy = advise(r1_spec, config, Workload(2000, 2000, 2000))
    assert (light.gpus_best or 0) < (heavy.gpus_best or 0)
    assert balancedness_for(0, 32) < balancedness_for(16, 32) < balancedness_for(32, 32) == 0.9


def test_plan_sla_prints_a_recommendation_and_json(capsys) -> None:
    argv = ["plan", "-f", str(EXAMPLE), "--sla", "--rate", "1200", "--isl", "2000", "--osl", "2000"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "recommendation:" in text and "runner-up" in text
    assert "prefill: EP" in text and "decode: EP" in text and "now: EP32" in text
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prefill"]["best"]["gpus"] > 0 and out["sla"]["ttftMs"] == 2000
    # Without --sla, `plan` is the resolved layout as before.
    assert main(["plan", "-f", str(EXAMPLE)]) == 0
    assert "recommendation" not in capsys.readouterr().out
    # A workload is needed.
    assert main(["plan", "-f", str(EXAMPLE), "--sla"]) == 2
    assert "--rate" in capsys.readouterr().err
