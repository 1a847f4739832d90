"""The embedded plan applies `redundantExperts` and `spec.eplb`: the placement each pool starts
on, and the EPLB settings each group runs with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from moeplane.api.enums import EplbMode
from moeplane.workers.embedded.plan import (
    DEFAULT_MANIFEST,
    EmbeddedPlanError,
    load_manifest,
    plan_from_deployment,
)
from moeplane.workers.eplb.metrics import placement_balancedness
from moeplane.workers.eplb.online import GroupEplb
from moeplane.workers.placement import Placement

pytestmark = pytest.mark.unit


def with_eplb(**update):
    dep = load_manifest(DEFAULT_MANIFEST)
    eplb = dep.spec.eplb.model_copy(update=update)
    return dep.model_copy(update={"spec": dep.spec.model_copy(update={"eplb": eplb})})


def test_online_pools_start_on_identity_with_their_redundant_slots() -> None:
    plan = plan_from_deployment(load_manifest(DEFAULT_MANIFEST))  # tiny-cpu: online, 4 redundant
    arch = plan.arch
    for pool in (plan.prefill, plan.decode):
        assert pool.redundant_experts == 4 and pool.placement is not None
        expected = Placement.identity(arch.num_moe_layers, arch.num_routed_experts, 20)
        assert torch.equal(pool.placement.phy2log, expected.phy2log) and pool.placement.version == 0
    eplb = GroupEplb.from_spec(plan.eplb, "redis://127.0.0.1:1", plan.keys, arch.n_group, 2)
    assert eplb is not None and eplb.mode is EplbMode.ONLINE
    assert (eplb.window_s, eplb.interval_s, eplb.balance.threshold) == (10, 30, 0.8)
    assert plan_from_deployment(with_eplb(mode=EplbMode.OFF)).decode.placement is not None
    assert GroupEplb.from_spec(with_eplb(mode=EplbMode.OFF).spec.eplb, "redis://x", plan.keys, 4, 2) is None


def test_static_mode_places_the_load_file_relative_to_the_manifest(tmp_path: Path) -> None:
    arch = plan_from_deployment(load_manifest(DEFAULT_MANIFEST)).arch
    load = torch.ones(arch.num_moe_layers, arch.num_routed_experts)
    load[:, 4:7] = 50.0  # three hot experts
    (tmp_path / "load.json").write_text(json.dumps({"load": load.tolist()}))
    plan = plan_from_deployment(with_eplb(mode=EplbMode.STATIC, load_file="load.json"), manifest_dir=tmp_path)
    placement = plan.decode.placement
    assert placement is not None and placement.num_physical == 20
    assert bool((placement.logcnt[:, 4:7] >= 2).all()), "hot experts get the redundant slots"
    identity = Placement.identity(arch.num_moe_layers, arch.num_routed_experts, 20)
    assert float(placement_balancedness(load, placement, 2).min()) > 0.95
    assert float(placement_balancedness(load, identity, 2).max()) < 0.7


def test_a_bad_load_file_names_the_field(tmp_path: Path) -> None:
    missing = r"spec\.eplb\.loadFile: load file .*missing\.json does not exist"
    with pytest.raises(EmbeddedPlanError, match=missing):
        plan_from_deployment(with_eplb(mode=EplbMode.STATIC, load_file="missing.json"), manifest_dir=tmp_path)
    (tmp_path / "short.json").write_text(json.dumps([[1.0] * 16]))
    with pytest.raises(EmbeddedPlanError, match="has 1 layers, the model has 3 MoE layers"):
        plan_from_deployment(with_eplb(mode=EplbMode.STATIC, load_file=str(tmp_path / "short.json")))
