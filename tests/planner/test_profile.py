"""Profiles: the JSON format, its loader's errors, and interpolation against the roofline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from moeplane.api.enums import Role
from moeplane.api.hardware import HardwarePreset, hardware_preset
from moeplane.api.layout import resolve_group
from moeplane.api.presets import model_preset
from moeplane.api.spec import PoolSpec
from moeplane.planner.perf.errors import PerfModelError
from moeplane.planner.perf.profile import (
    ProfiledModel,
    load_profile,
    profile_from_models,
    profiled_pair,
    save_profile,
)
from moeplane.planner.perf.roofline import RooflineModel

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def roofline_pair() -> tuple[RooflineModel, RooflineModel]:
    arch, hw = model_preset("deepseek-r1"), hardware_preset(HardwarePreset.H800)
    return tuple(  # type: ignore[return-value]
        RooflineModel(
            arch, hw, resolve_group(arch, hw, PoolSpec(expert_parallel=ep, redundant_experts=32), role)
        )
        for ep, role in ((32, Role.PREFILL), (144, Role.DECODE))
    )


def test_round_trip_through_json_reproduces_the_model(tmp_path, roofline_pair) -> None:
    prefill, decode = roofline_pair
    path = tmp_path / "profile.json"
    save_profile(profile_from_models(prefill, decode, model="deepseek-r1", hardware="h800"), path)
    p, d = profiled_pair(load_profile(path))
    assert (p.dp_ranks, p.nodes_per_group, d.gpus_per_group) == (32, 4, 144)
    assert d.kv_tokens_per_rank == decode.kv_tokens_per_rank
    # At grid points exact; between them bilinear stays within 3% of the roofline.
    assert p.prefill_step_s(8192, 4096) == pytest.approx(prefill.prefill_step_s(8192, 4096), rel=1e-9)
    rng = np.random.default_rng(0)
    for tokens, isl in zip(rng.uniform(300, 30000, 20), rng.uniform(300, 30000, 20), strict=True):
        assert p.prefill_step_s(tokens, isl) == pytest.approx(prefill.prefill_step_s(tokens, isl), rel=0.03)
    for batch, ctx in zip(rng.uniform(1, 400, 20), rng.uniform(100, 60000, 20), strict=True):
        assert d.decode_step_s(batch, ctx) == pytest.approx(decode.decode_step_s(batch, ctx), rel=0.03)


def test_vectorised_calls_match_scalar_calls(roofline_pair) -> None:
    _, d = profiled_pair(profile_from_models(*roofline_pair, model="m", hardware="h"))
    batch, ctx = np.array([1.0, 37.0, 250.0]), np.array([500.0, 4000.0, 90000.0])
    assert np.allclose(
        d.decode_step_s_array(batch, ctx), [d.decode_step_s(b, c) for b, c in zip(batch, ctx, strict=True)]
    )
    with pytest.raises(PerfModelError, match="decode model; prefill steps"):
        d.prefill_step_s(100, 100)


def _write(tmp_path, doc: dict) -> str:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_loader_names_the_field_of_a_bad_profile(tmp_path, roofline_pair) -> None:
    good = profile_from_models(*roofline_pair, model="m", hardware="h").model_dump(mode="json")
    bad = json.loads(json.dumps(good))
    bad["decode"]["context_tokens"][2] = bad["decode"]["context_tokens"][1]
    with pytest.raises(
        PerfModelError, match=r"decode: .*context_tokens must increase strictly: \[1\]=256.0 then \[2\]=256.0"
    ):
        load_profile(_write(tmp_path, bad))
    bad = json.loads(json.dumps(good))
    bad["prefill"]["step_ms"][0] = bad["prefill"]["step_ms"][0][:-1]
    with pytest.raises(PerfModelError, match="step_ms\\[0\\] has 20 values, tokens_per_rank has 21 points"):
        load_profile(_write(tmp_path, bad))
    bad = json.loads(json.dumps(good))
    bad["prefill"]["step_ms"][1][1] = -1.0
    with pytest.raises(
        PerfModelError, match=r"step_ms\[1\]\[1\] must be a positive number of milliseconds, got -1.0"
    ):
        load_profile(_write(tmp_path, bad))
    bad = dict(good, format="moeplane.profile/v0")
    with pytest.raises(PerfModelError, match="format"):
        load_profile(_write(tmp_path, bad))
    with pytest.raises(PerfModelError, match="No such file"):
        load_profile(tmp_path / "missing.json")


def test_profiled_model_satisfies_the_step_protocols(roofline_pair) -> None:
    from moeplane.planner.perf.step_model import DecodeStepModel, PrefillStepModel

    p, d = profiled_pair(profile_from_models(*roofline_pair, model="m", hardware="h"))
    assert isinstance(p, PrefillStepModel) and isinstance(d, DecodeStepModel)
    assert isinstance(roofline_pair[0], PrefillStepModel)
    assert isinstance(ProfiledModel(p.profile, Role.DECODE), DecodeStepModel)
