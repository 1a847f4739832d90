"""Published end-to-end DeepSeek-V3/R1 serving figures, and the roofline model at their settings.

Each entry records what its source states (hardware, layout, sequence lengths, MTP, prefix-cache
hits, per-node throughput); where a source leaves a setting out, the entry says what was
assumed. The model is evaluated at the same settings so the ratio compares like with like as far
as the sources allow. Published figures are averages under production or benchmark conditions;
the roofline is a ceiling with kernel efficiencies from `Efficiency`, so ratios above 1 are
expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moeplane.api.enums import Role
from moeplane.api.hardware import HardwarePreset, hardware_preset
from moeplane.api.layout import resolve_group
from moeplane.api.presets import ModelPreset, model_preset
from moeplane.api.spec import PoolSpec
from moeplane.planner.perf.report import Workload, node_throughput
from moeplane.planner.perf.roofline import RooflineModel, RooflineOptions


@dataclass(frozen=True)
class PublishedFigure:
    source: str
    url: str
    hardware: HardwarePreset
    prefill_ep: int
    decode_ep: int
    redundant_experts: int
    workload: Workload
    prefix_cache_hit_rate: float
    mtp_draft_tokens: int
    mtp_acceptance: float
    prefill_input_tokens_per_s_per_node: float
    decode_output_tokens_per_s_per_node: float
    note: str
    model: ModelPreset = ModelPreset.DEEPSEEK_R1


PUBLISHED: tuple[PublishedFigure, ...] = (
    PublishedFigure(
        source="DeepSeek, Day 6: DeepSeek-V3/R1 inference system overview (2025-03-01)",
        url="https://github.com/deepseek-ai/open-infra-index/blob/main/202502OpenSourceWeek/"
        "day_6_one_more_thing_deepseekV3R1_inference_system_overview.md",
        hardware=HardwarePreset.H800,
        prefill_ep=32,
        decode_ep=144,
        redundant_experts=32,
        # 608B input vs 168B output tokens a day: ISL/OSL ~ 3.6; 4K prompts as in their profile
        # data; 20-22 output tokens/s per user: ~48 ms per output token.
        workload=Workload(isl_tokens=4096, osl_tokens=1130, itl_target_ms=47.6),
        prefix_cache_hit_rate=0.563,
        mtp_draft_tokens=1,
        mtp_acceptance=0.85,
        prefill_input_tokens_per_s_per_node=73_700,
        decode_output_tokens_per_s_per_node=14_800,
        note="24-hour production average incl. 56.3% cache hits and MTP; ISL 4K assumed",
    ),
    PublishedFigure(
        source="SGLang (LMSYS), DeepSeek with PD disaggregation and large-scale EP on 96 H100 (2025-05-05)",
        url="https://lmsys.org/blog/2025-05-05-large-scale-ep/",
        hardware=HardwarePreset.H100,
        prefill_ep=32,
        decode_ep=72,
        redundant_experts=32,
        workload=Workload(isl_tokens=2000, osl_tokens=100, itl_target_ms=100.0),
        prefix_cache_hit_rate=0.0,
        mtp_draft_tokens=0,
        mtp_acceptance=0.0,
        prefill_input_tokens_per_s_per_node=52_300,
        decode_output_tokens_per_s_per_node=22_300,
        note="benchmark, 2000-token inputs, no MTP; ITL ~100 ms as the post reports; OSL 100 assumed",
    ),
    PublishedFigure(
        source="SGLang with NVIDIA, DeepSeek on GB200 NVL72, part II, BF16 attention + FP8 MoE (2025-09-25)",
        url="https://lmsys.org/blog/2025-09-25-gb200-part-2/",
        hardware=HardwarePreset.GB200,
        prefill_ep=8,
        decode_ep=48,
        redundant_experts=32,
        workload=Workload(isl_tokens=2000, osl_tokens=100, itl_target_ms=None),
        prefix_cache_hit_rate=0.0,
        mtp_draft_tokens=0,
        mtp_acceptance=0.0,
        prefill_input_tokens_per_s_per_node=18_471 * 4,
        decode_output_tokens_per_s_per_node=9_087 * 4,
        note="benchmark, 18,471 in / 9,087 out tok/s per GPU x 4 GPUs per tray; decode saturated; "
        "layout (prefill 2 trays, decode 12) from part I",
    ),
)


def model_at(figure: PublishedFigure, options: RooflineOptions | None = None) -> dict[str, Any]:
    """The roofline's per-node throughput at the figure's settings, beside the published one."""
    arch, hw = model_preset(figure.model), hardware_preset(figure.hardware)
    base = options or RooflineOptions()
    models = {}
    for role, ep in ((Role.PREFILL, figure.prefill_ep), (Role.DECODE, figure.decode_ep)):
        pool = PoolSpec(expert_parallel=ep, redundant_experts=figure.redundant_experts)
        opts = RooflineOptions(
            two_batch_overlap=base.two_batch_overlap,
            balancedness=base.balancedness,
            prefix_cache_hit_rate=figure.prefix_cache_hit_rate if role is Role.PREFILL else 0.0,
            mtp_draft_tokens=figure.mtp_draft_tokens,
            mtp_acceptance=figure.mtp_acceptance,
            efficiency=base.efficiency,
        )
        models[role] = RooflineModel(arch, hw, resolve_group(arch, hw, pool, role), opts)
    ours = node_throughput(models[Role.PREFILL], models[Role.DECODE], figure.workload)
    return {
        "source": figure.source,
        "url": figure.url,
        "hardware": figure.hardware.value,
        "layout": (
            f"prefill EP{figure.prefill_ep}, decode EP{figure.decode_ep}, +{figure.redundant_experts} experts"
        ),
        "published_prefill_input_tokens_per_s_per_node": figure.prefill_input_tokens_per_s_per_node,
        "model_prefill_input_tokens_per_s_per_node": round(ours.prefill_input_tokens_per_s_per_node, 1),
        "prefill_model_over_published": round(
            ours.prefill_input_tokens_per_s_per_node / figure.prefill_input_tokens_per_s_per_node, 3
        ),
        "published_decode_output_tokens_per_s_per_node": figure.decode_output_tokens_per_s_per_node,
        "model_decode_output_tokens_per_s_per_node": round(ours.decode_output_tokens_per_s_per_node, 1),
        "decode_model_over_published": round(
            ours.decode_output_tokens_per_s_per_node / figure.decode_output_tokens_per_s_per_node, 3
        ),
        "model_decode_batch_per_rank": round(ours.decode_batch_per_rank, 1),
        "model_decode_itl_ms": round(ours.decode_itl_ms, 2),
        "note": figure.note,
    }


def comparison(options: RooflineOptions | None = None) -> list[dict[str, Any]]:
    return [model_at(f, options) for f in PUBLISHED]
