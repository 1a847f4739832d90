"""Published DeepSeek-V3/R1 and Kimi K2 serving figures, and the roofline model at their settings.

Each row is one metric of one source (prefill input or decode output tokens/s per GPU) with the
hardware, layout and workload the source states; where it leaves a setting out, the row says
what was assumed. Rows marked `fit` calibrate the model's end-to-end factors (one per GPU
generation, `Efficiency.inflation`); every other row is held out and judged against them:

- a `benchmark` row (a capacity measured at a stated workload) must be within ±25%;
- a `production` row (an average over a day of live traffic, nodes not always saturated) is a
  lower bound on capacity: the model must not fall more than 25% below it.

`calibrate()` recomputes the factors from the fit rows, so the constants in `roofline.py` can
be checked against their sources.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from moeplane.api.enums import Role
from moeplane.api.hardware import HardwarePreset, hardware_preset
from moeplane.api.layout import resolve_group
from moeplane.api.presets import ModelPreset, model_preset
from moeplane.api.spec import PoolSpec
from moeplane.planner.perf.report import Workload, node_throughput
from moeplane.planner.perf.roofline import BLACKWELL, Efficiency, RooflineModel, RooflineOptions

TOLERANCE = 0.25


class Metric(StrEnum):
    PREFILL = "prefill in/s/GPU"
    DECODE = "decode out/s/GPU"


class Kind(StrEnum):
    BENCHMARK = "benchmark"
    PRODUCTION = "production"


@dataclass(frozen=True)
class PublishedFigure:
    label: str
    url: str
    hardware: HardwarePreset
    metric: Metric
    per_gpu: float  # the published tokens/s per GPU
    prefill_ep: int
    decode_ep: int
    prefill_redundant: int
    decode_redundant: int
    workload: Workload
    kind: Kind = Kind.BENCHMARK
    fit: bool = False
    prefix_cache_hit_rate: float = 0.0
    mtp_draft_tokens: int = 0
    mtp_acceptance: float = 0.0
    note: str = ""
    model: ModelPreset = ModelPreset.DEEPSEEK_R1


_SGLANG_H100 = "https://lmsys.org/blog/2025-05-05-large-scale-ep/"
_SGLANG_GB200_1 = "https://lmsys.org/blog/2025-06-16-gb200-part-1/"
_SGLANG_GB200_2 = "https://lmsys.org/blog/2025-09-25-gb200-part-2/"
_KIMI_H200 = "https://lmsys.org/blog/2025-07-20-k2-large-scale-ep/"
_DEEPSEEK = (
    "https://github.com/deepseek-ai/open-infra-index/blob/main/202502OpenSourceWeek/"
    "day_6_one_more_thing_deepseekV3R1_inference_system_overview.md"
)
_SHORT = Workload(isl_tokens=2000, osl_tokens=100, itl_target_ms=None)  # decode saturated

PUBLISHED: tuple[PublishedFigure, ...] = (
    PublishedFigure(
        "SGLang, DeepSeek-R1 on 96 x H100 (2025-05)",
        _SGLANG_H100,
        HardwarePreset.H100,
        Metric.PREFILL,
        52_300 / 8,
        32,
        72,
        32,
        32,
        replace(_SHORT, itl_target_ms=100.0),
        fit=True,
        note="2000-token inputs, no MTP; 52.3k tokens/s per node",
    ),
    PublishedFigure(
        "SGLang, DeepSeek-R1 on 96 x H100 (2025-05)",
        _SGLANG_H100,
        HardwarePreset.H100,
        Metric.DECODE,
        22_300 / 8,
        32,
        72,
        32,
        32,
        replace(_SHORT, itl_target_ms=100.0),
        fit=True,
        note="decode saturated at ~100 ms ITL; 22.3k tokens/s per node; OSL 100 assumed",
    ),
    PublishedFigure(
        "SGLang, DeepSeek on GB200 NVL72, BF16 attn + FP8 MoE (2025-09)",
        _SGLANG_GB200_2,
        HardwarePreset.GB200,
        Metric.PREFILL,
        18_471,
        8,
        48,
        32,
        32,
        _SHORT,
        fit=True,
        note="2000-token inputs; layout (prefill 2 trays, decode 12) from part I",
    ),
    PublishedFigure(
        "SGLang, DeepSeek on GB200 NVL72, BF16 attn + FP8 MoE (2025-09)",
        _SGLANG_GB200_2,
        HardwarePreset.GB200,
        Metric.DECODE,
        9_087,
        8,
        48,
        32,
        32,
        _SHORT,
        fit=True,
        note="decode saturated by the slow-down method",
    ),
    PublishedFigure(
        "SGLang, DeepSeek on GB200 NVL72, part I (2025-06)",
        _SGLANG_GB200_1,
        HardwarePreset.GB200,
        Metric.DECODE,
        7_583,
        8,
        48,
        32,
        32,
        _SHORT,
        note="decode on 12 trays (EP48), 2000-token inputs, no MTP; an earlier software stack",
    ),
    PublishedFigure(
        "SGLang + Mooncake, Kimi K2 on 128 x H200 (2025-07)",
        _KIMI_H200,
        HardwarePreset.H200,
        Metric.PREFILL,
        56_000 / 8,
        32,
        96,
        0,
        96,
        _SHORT,
        model=ModelPreset.KIMI_K2,
        note="1P1D: prefill 4 nodes (EP32), decode 12 nodes (EP96, 96 redundant experts); 56k/node",
    ),
    PublishedFigure(
        "SGLang + Mooncake, Kimi K2 on 128 x H200 (2025-07)",
        _KIMI_H200,
        HardwarePreset.H200,
        Metric.DECODE,
        24_000 / 8,
        32,
        96,
        0,
        96,
        _SHORT,
        model=ModelPreset.KIMI_K2,
        note="2000 in / 100 out, decode batch 480; 24k tokens/s per node",
    ),
    PublishedFigure(
        "DeepSeek, V3/R1 inference system, 24 h production (2025-03)",
        _DEEPSEEK,
        HardwarePreset.H800,
        Metric.PREFILL,
        73_700 / 8,
        32,
        144,
        32,
        32,
        Workload(isl_tokens=4096, osl_tokens=1130, itl_target_ms=47.6),
        kind=Kind.PRODUCTION,
        prefix_cache_hit_rate=0.563,
        mtp_draft_tokens=1,
        mtp_acceptance=0.85,
        note="daily average incl. 56.3% cache hits; ISL 4K assumed",
    ),
    PublishedFigure(
        "DeepSeek, V3/R1 inference system, 24 h production (2025-03)",
        _DEEPSEEK,
        HardwarePreset.H800,
        Metric.DECODE,
        14_800 / 8,
        32,
        144,
        32,
        32,
        Workload(isl_tokens=4096, osl_tokens=1130, itl_target_ms=47.6),
        kind=Kind.PRODUCTION,
        mtp_draft_tokens=1,
        mtp_acceptance=0.85,
        note="daily average with MTP at 20-22 tokens/s per user",
    ),
)


def _model_per_gpu(figure: PublishedFigure, efficiency: Efficiency) -> float:
    arch, hw = model_preset(figure.model), hardware_preset(figure.hardware)
    models = {}
    layout = {
        Role.PREFILL: (figure.prefill_ep, figure.prefill_redundant),
        Role.DECODE: (figure.decode_ep, figure.decode_redundant),
    }
    for role, (ep, redundant) in layout.items():
        pool = PoolSpec(expert_parallel=ep, redundant_experts=redundant)
        opts = RooflineOptions(
            prefix_cache_hit_rate=figure.prefix_cache_hit_rate if role is Role.PREFILL else 0.0,
            mtp_draft_tokens=figure.mtp_draft_tokens,
            mtp_acceptance=figure.mtp_acceptance,
            efficiency=efficiency,
        )
        models[role] = RooflineModel(arch, hw, resolve_group(arch, hw, pool, role), opts)
    ours = node_throughput(models[Role.PREFILL], models[Role.DECODE], figure.workload)
    if figure.metric is Metric.PREFILL:
        per_node, gpus = ours.prefill_input_tokens_per_s_per_node, models[Role.PREFILL].layout.gpus_per_node
    else:
        per_node, gpus = ours.decode_output_tokens_per_s_per_node, models[Role.DECODE].layout.gpus_per_node
    return per_node / gpus


def model_at(figure: PublishedFigure, efficiency: Efficiency | None = None) -> dict[str, Any]:
    """The model's tokens/s per GPU at the figure's settings, beside the published one."""
    model = _model_per_gpu(figure, efficiency or Efficiency())
    ratio = model / figure.per_gpu
    ok = abs(ratio - 1) <= TOLERANCE if figure.kind is Kind.BENCHMARK else ratio >= 1 - TOLERANCE
    return {
        "label": figure.label,
        "url": figure.url,
        "hardware": figure.hardware.value,
        "model_preset": figure.model.value,
        "layout": f"prefill EP{figure.prefill_ep} +{figure.prefill_redundant}, decode EP{figure.decode_ep} "
        f"+{figure.decode_redundant}",
        "workload": {
            "isl_tokens": figure.workload.isl_tokens,
            "osl_tokens": figure.workload.osl_tokens,
            "itl_target_ms": figure.workload.itl_target_ms,
        },
        "metric": figure.metric.value,
        "kind": figure.kind.value,
        "fit": figure.fit,
        "published": figure.per_gpu,
        "model": round(model, 1),
        "ratio": round(ratio, 3),
        "within_25_percent": ok,
        "note": figure.note,
    }


def comparison(efficiency: Efficiency | None = None) -> list[dict[str, Any]]:
    return [model_at(f, efficiency) for f in PUBLISHED]


def calibrate(base: Efficiency | None = None) -> Efficiency:
    """The inflation factors that make the model meet each fit row exactly (per generation and
    phase; a bisection on the factor, throughput falls as it grows)."""
    eff = base or Efficiency()
    fields = {
        (False, Metric.PREFILL): "prefill_inflation",
        (False, Metric.DECODE): "decode_inflation",
        (True, Metric.PREFILL): "blackwell_prefill_inflation",
        (True, Metric.DECODE): "blackwell_decode_inflation",
    }
    for figure in (f for f in PUBLISHED if f.fit):
        name = fields[(figure.hardware.value in BLACKWELL, figure.metric)]
        lo, hi = 1.0, 6.0
        for _ in range(40):
            mid = (lo + hi) / 2
            trial = replace(eff, **{name: mid})
            lo, hi = (mid, hi) if _model_per_gpu(figure, trial) > figure.per_gpu else (lo, mid)
        eff = replace(eff, **{name: round((lo + hi) / 2, 3)})
    return eff
