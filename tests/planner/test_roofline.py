"""The roofline cost model: the physics it claims, on DeepSeek-R1 layouts."""

from __future__ import annotations

from dataclasses import replace

import pytest
from moeplane.api.enums import Role
from moeplane.api.hardware import HardwarePreset, hardware_preset
from moeplane.api.layout import resolve_group
from moeplane.api.presets import model_preset
from moeplane.api.spec import PoolSpec
from moeplane.planner.perf.errors import PerfModelError
from moeplane.planner.perf.published import calibrate, comparison
from moeplane.planner.perf.roofline import Efficiency, RooflineModel, RooflineOptions

pytestmark = pytest.mark.unit

R1 = model_preset("deepseek-r1")


def model(
    ep: int, role: Role, gpu: HardwarePreset = HardwarePreset.H800, redundant: int = 32, **options: object
) -> RooflineModel:
    hw = hardware_preset(gpu)
    layout = resolve_group(R1, hw, PoolSpec(expert_parallel=ep, redundant_experts=redundant), role)
    return RooflineModel(R1, hw, layout, RooflineOptions(**options))  # type: ignore[arg-type]


def test_wide_ep_raises_expert_arithmetic_intensity() -> None:
    """Same tokens per GPU: 9 expert slots per GPU (EP32) read 4.5x the weights of 2 (EP144);
    at a decode-sized batch the experts are memory-bound, so the time follows the slots."""
    narrow = model(32, Role.DECODE, two_batch_overlap=False).decode_breakdown(32, 2048)
    wide = model(144, Role.DECODE, two_batch_overlap=False).decode_breakdown(32, 2048)
    assert narrow.routed_experts_s / wide.routed_experts_s == pytest.approx(9 / 2, rel=0.05)
    # At a prefill-sized batch both are compute-bound: the same FLOPs per GPU.
    narrow_p = model(32, Role.PREFILL, two_batch_overlap=False).prefill_breakdown(16384, 4096)
    wide_p = model(144, Role.PREFILL, two_batch_overlap=False).prefill_breakdown(16384, 4096)
    assert narrow_p.routed_experts_s == pytest.approx(wide_p.routed_experts_s, rel=0.01)


def test_decode_step_grows_with_context_and_batch() -> None:
    m = model(144, Role.DECODE)
    assert m.decode_step_s(64, 1024) < m.decode_step_s(64, 8192) < m.decode_step_s(128, 8192)
    # KV reads dominate the attention core: 8x the context, ~8x the core time.
    short, long_ = m.decode_breakdown(64, 1024), m.decode_breakdown(64, 8192)
    assert long_.attention_core_s / short.attention_core_s == pytest.approx(8.0, rel=0.1)


def test_two_batch_overlap_hides_communication_in_prefill() -> None:
    off = model(32, Role.PREFILL, two_batch_overlap=False).prefill_breakdown(16384, 4096)
    on = model(32, Role.PREFILL, two_batch_overlap=True).prefill_breakdown(16384, 4096)
    assert on.total_s < 0.7 * off.total_s
    assert on.as_dict()["overlap_hidden_ms"] > 0
    # Without overlap nothing is hidden: the parts add up to the step.
    assert off.as_dict()["overlap_hidden_ms"] == pytest.approx(0.0, abs=1e-6)


def test_imbalance_slows_experts_and_all_to_all() -> None:
    even = model(144, Role.DECODE, balancedness=1.0).decode_breakdown(128, 4096)
    skewed = model(144, Role.DECODE, balancedness=0.5).decode_breakdown(128, 4096)
    assert skewed.routed_experts_s > 1.5 * even.routed_experts_s
    assert skewed.combine_s > 1.5 * even.combine_s
    assert skewed.attention_core_s == pytest.approx(even.attention_core_s)


def test_one_node_groups_stay_on_nvlink() -> None:
    one_node = model(8, Role.DECODE, redundant=0).decode_breakdown(64, 2048)
    two_nodes = model(16, Role.DECODE, redundant=0).decode_breakdown(64, 2048)
    assert one_node.dispatch_s < 0.5 * two_nodes.dispatch_s


def test_mtp_emits_more_tokens_per_step() -> None:
    m = model(144, Role.DECODE, mtp_draft_tokens=1, mtp_acceptance=0.8)
    assert m.output_tokens_per_step == pytest.approx(1.8)
    assert m.decode_step_s(64, 4096) > model(144, Role.DECODE).decode_step_s(64, 4096)


def test_bad_layouts_and_options_name_the_numbers() -> None:
    hw = hardware_preset(HardwarePreset.H800)
    layout = resolve_group(R1, hw, PoolSpec(expert_parallel=40, redundant_experts=32), Role.DECODE)
    with pytest.raises(PerfModelError, match="288 expert slots do not divide among expertParallel 40"):
        RooflineModel(R1, hw, layout)
    with pytest.raises(PerfModelError, match="balancedness must be in"):
        RooflineOptions(balancedness=0.0)
    with pytest.raises(PerfModelError, match=r"efficiency\.hbm"):
        Efficiency(hbm=1.5)
    with pytest.raises(PerfModelError, match="isl_tokens > 0"):
        model(32, Role.PREFILL).prefill_breakdown(1024, 0)


def test_the_calibration_constants_are_the_fit_rows_fit() -> None:
    """The inflation factors in roofline.py are what the fit rows give (recomputed here), and
    the model meets each fit row."""
    stored, fitted = Efficiency(), calibrate()
    for name in (
        "prefill_inflation",
        "decode_inflation",
        "blackwell_prefill_inflation",
        "blackwell_decode_inflation",
    ):
        assert getattr(stored, name) == pytest.approx(getattr(fitted, name), rel=0.01), name
    for row in comparison():
        if row["fit"]:
            assert row["ratio"] == pytest.approx(1.0, abs=0.02), row["label"]


def test_every_held_out_row_is_within_25_percent() -> None:
    """More than three sources, each with its workload; the model is judged on the rows it was
    not fit to: benchmarks within ±25%, production averages (capacity not always used) not more
    than 25% above the model."""
    rows = comparison()
    held_out = [r for r in rows if not r["fit"]]
    assert len({r["url"] for r in rows}) > 3 and len(held_out) >= 4
    assert {r["model_preset"] for r in held_out} >= {"deepseek-r1", "kimi-k2"}
    for r in held_out:
        if r["kind"] == "benchmark":
            assert 0.75 <= r["ratio"] <= 1.25, (r["label"], r["metric"], r["ratio"])
        else:
            assert r["ratio"] >= 0.75, (r["label"], r["metric"], r["ratio"])
        assert r["within_25_percent"]
    assert all(r["workload"]["isl_tokens"] > 0 and r["url"].startswith("https://") for r in rows)


def test_inflation_scales_the_whole_step() -> None:
    base = model(144, Role.DECODE)
    flat = RooflineModel(
        base.arch,
        base.hw,
        base.layout,
        replace(base.options, efficiency=Efficiency(prefill_inflation=1.0, decode_inflation=1.0)),
    )
    eff = base.options.efficiency
    raw = flat.decode_step_s(64, 4096) - eff.step_overhead_s
    assert base.decode_step_s(64, 4096) - eff.step_overhead_s == pytest.approx(raw * eff.decode_inflation)
