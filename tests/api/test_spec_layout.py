"""Presets, the spec models and the resolved layout: the published numbers come out."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from moeplane.api.errors import SpecInvalid
from moeplane.api.hardware import HardwarePreset, hardware_preset
from moeplane.api.layout import resolve_layout
from moeplane.api.presets import ModelPreset, model_preset
from moeplane.api.spec import (
    EplbMode,
    MoEDeployment,
    MoEDeploymentSpec,
    PoolSpec,
    Role,
    parse_deployment,
)

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> MoEDeployment:
    return parse_deployment(yaml.safe_load((EXAMPLES / name).read_text()))


def test_deepseek_v3_published_sizes() -> None:
    arch = model_preset(ModelPreset.DEEPSEEK_V3)
    assert abs(arch.total_params / 1e9 - 671) < 1.0
    assert arch.kv_bytes_per_token == 70_272
    assert (arch.num_layers, arch.first_k_dense_layers, arch.num_moe_layers) == (61, 3, 58)
    assert (arch.num_routed_experts, arch.num_shared_experts, arch.num_experts_per_tok) == (256, 1, 8)
    assert (arch.n_group, arch.topk_group, arch.kv_lora_rank, arch.qk_rope_head_dim) == (8, 4, 512, 64)


def test_other_presets() -> None:
    kimi = model_preset("kimi-k2")
    assert (kimi.num_routed_experts, kimi.num_shared_experts) == (384, 1)
    assert abs(kimi.total_params / 1e12 - 1.03) < 0.03
    qwen = model_preset("qwen3-235b-a22b")
    assert (qwen.num_moe_layers, qwen.num_routed_experts, qwen.num_shared_experts) == (94, 128, 0)
    assert (qwen.num_attention_heads, qwen.num_kv_heads, qwen.head_dim) == (64, 4, 128)
    assert abs(qwen.total_params / 1e9 - 235) < 3
    assert abs(qwen.activated_params_per_token / 1e9 - 22) < 1
    with pytest.raises(ValueError, match="known presets: deepseek-v3"):
        model_preset("gpt-5")
    assert hardware_preset(HardwarePreset.GB200).gpus_per_node == 4


def test_deepseek_r1_layout_matches_deepseeks_deployment() -> None:
    layout = resolve_layout(load("deepseek-r1.yaml").spec)
    prefill, decode = layout.prefill, layout.decode
    experts = ("nodes_per_group", "routed_experts_per_gpu", "shared_experts_per_gpu")
    assert [getattr(prefill, k) for k in experts] == [4, 9, 1]
    assert [getattr(decode, k) for k in experts] == [18, 2, 1]
    assert (prefill.total_gpus, decode.total_gpus) == (32, 144)
    assert (layout.total_gpus, layout.total_nodes) == (176, 22)
    assert layout.kv_bytes_per_token == 70_272
    # Prefill holds 7 more routed experts per GPU than decode: 7 x 58 layers x 44 MB more weights.
    arch = model_preset("deepseek-r1")
    assert prefill.weight_bytes_per_gpu - decode.weight_bytes_per_gpu == pytest.approx(
        7 * 58 * arch.expert_bytes, abs=1)
    assert prefill.kv_tokens_per_gpu == (72_000_000_000 - prefill.weight_bytes_per_gpu) // 70_272


def test_kv_tokens_per_gpu_for_gqa_follow_attention_tp() -> None:
    spec = load("qwen3-235b.yaml").spec
    dp8 = spec.model_copy(update={"prefill": spec.prefill.model_copy(update={"data_parallel_attention": 8})})
    pure_dp, tp2 = resolve_layout(spec).prefill, resolve_layout(dp8).prefill
    assert (pure_dp.attention_tp_size, tp2.attention_tp_size) == (1, 2)
    assert pure_dp.kv_bytes_per_token_per_gpu == 2 * 4 * 128 * 94 * 2
    assert tp2.kv_bytes_per_token_per_gpu == pure_dp.kv_bytes_per_token_per_gpu // 2
    assert tp2.kv_tokens_per_group == tp2.kv_tokens_per_gpu * 8


def test_tiny_cpu_is_the_embedded_default() -> None:
    deployment = load("tiny-cpu.yaml")
    spec = deployment.spec
    assert spec.model.preset is ModelPreset.TINY and spec.hardware.gpu is HardwarePreset.CPU
    layout = resolve_layout(spec)
    for role in Role:
        pool = layout.pool(role)
        assert (pool.expert_parallel, pool.groups, pool.nodes_per_group) == (2, 1, 1)
    assert spec.eplb.mode is EplbMode.ONLINE


def test_defaults_and_wire_round_trip() -> None:
    deployment = load("tiny-cpu.yaml")
    wire = deployment.to_wire()
    assert wire["spec"]["kvTransfer"]["chunkBytes"] == 262144
    assert parse_deployment(wire) == deployment
    minimal = MoEDeploymentSpec.model_validate({
        "model": {"preset": "tiny", "weights": {"format": "random"}},
        "hardware": {"gpu": "cpu"},
        "prefill": {"expertParallel": 2}, "decode": {"expertParallel": 2},
        "sla": {"ttftMs": 500, "itlMs": 50},
    })
    assert minimal.prefill == PoolSpec(expert_parallel=2)
    assert minimal.planner.enabled and minimal.eplb.interval_seconds == 300
    assert minimal.prefill.attention_dp_size == 2


def test_status_and_metadata_from_the_api_server_parse() -> None:
    wire = yaml.safe_load((EXAMPLES / "deepseek-r1.yaml").read_text())
    wire["metadata"].update(generation=3, uid="u-1", managedFields=[{"manager": "kubectl"}])
    wire["status"] = {
        "observedGeneration": 3,
        "conditions": [{"type": "Ready", "status": "True", "reason": "GroupsReady",
                        "lastTransitionTime": "2025-01-01T00:00:00Z"}],
        "decode": {"desiredGroups": 1, "readyGroups": 1, "readyWorkers": 18, "balancedness": 0.93},
    }
    deployment = parse_deployment(wire)
    assert deployment.metadata.generation == 3
    assert deployment.status is not None and deployment.status.decode is not None
    assert deployment.status.decode.ready_workers == 18
    assert deployment.to_wire()["metadata"]["managedFields"] == [{"manager": "kubectl"}]


junk = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["spec.prefill", "spec.decode", "spec.eplb", "spec.sla", "spec.model", "spec"]), junk)
def test_parse_never_crashes(where: str, value: object) -> None:
    wire = yaml.safe_load((EXAMPLES / "deepseek-r1.yaml").read_text())
    *parents, leaf = where.split(".")
    node = wire
    for key in parents:
        node = node[key]
    node[leaf] = value
    try:
        parse_deployment(wire)
    except SpecInvalid as err:
        assert err.problems and all(p.path and p.message for p in err.problems)
