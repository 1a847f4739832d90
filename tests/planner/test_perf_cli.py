"""`moeplane perf` end to end through the CLI registry, and the spec adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from moeplane.api.enums import PerfModelSource, Predictor, Role
from moeplane.planner.perf.errors import PerfModelError
from moeplane.planner.perf.profile import load_profile
from moeplane.planner.spec_adapter import config_from_spec, pool_models

from moeplane.cli import main

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_perf_json_for_deepseek_r1_on_h800(capsys) -> None:
    assert main(["perf", "-f", str(EXAMPLES / "deepseek-r1.yaml"), "--hardware", "h800", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "deepseek-r1" and out["hardware"] == "h800"
    assert out["prefill_layout"] == {"expert_parallel": 32, "nodes_per_group": 4, "routed_experts_per_gpu": 9}
    assert (
        out["decode_layout"]["expert_parallel"] == 144 and out["decode_layout"]["routed_experts_per_gpu"] == 2
    )
    # Same order of magnitude as DeepSeek's published 73.7k / 14.8k tokens/s per H800 node.
    assert 30_000 < out["prefill_input_tokens_per_s_per_node"] < 150_000
    assert 7_000 < out["decode_output_tokens_per_s_per_node"] < 40_000
    assert out["decode_itl_ms"] <= 50.0 + 1e-6  # the example's spec.sla.itlMs
    for pool in ("prefill", "decode"):
        step = out["breakdown"][pool]
        parts = sum(step[k] for k in ("compute_ms", "communication_ms", "overhead_ms"))
        assert parts - step["overlap_hidden_ms"] == pytest.approx(step["total_ms"], abs=1e-3)  # 4-digit ms


def test_perf_table_and_options(capsys, tmp_path) -> None:
    profile = tmp_path / "r1.json"
    argv = ["perf", "-f", str(EXAMPLES / "deepseek-r1.yaml"), "--no-two-batch-overlap", "--itl-ms", "80"]
    assert main([*argv, "--write-profile", str(profile)]) == 0
    text = capsys.readouterr().out
    assert "input tokens/s per node" in text and "output tokens/s per node" in text
    assert "routed_experts" in text and "combine" in text
    assert load_profile(profile).decode.expert_parallel == 144
    assert main(["perf", "-f", str(EXAMPLES / "deepseek-r1.yaml"), "--hardware", "h200", "--json"]) == 0
    h200 = json.loads(capsys.readouterr().out)
    assert main(["perf", "-f", str(EXAMPLES / "deepseek-r1.yaml"), "--hardware", "h800", "--json"]) == 0
    h800 = json.loads(capsys.readouterr().out)
    # H200: more HBM bandwidth and memory, NVLink at full speed: faster decode.
    assert h200["decode_output_tokens_per_s_per_node"] > h800["decode_output_tokens_per_s_per_node"]


def test_perf_rejects_bad_manifests(capsys, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (EXAMPLES / "deepseek-r1.yaml").read_text().replace("expertParallel: 144", "expertParallel: 40")
    bad.write_text(text)
    assert main(["perf", "-f", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "spec.decode.expertParallel" in err
    assert main(["perf", "-f", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml" in capsys.readouterr().err


def test_spec_adapter(r1_spec, tmp_path) -> None:
    cfg = config_from_spec(r1_spec)
    assert cfg.sla.ttft_ms == 2000 and cfg.sla.itl_ms == 50 and cfg.sla.percentile == 90
    assert cfg.predictor is Predictor.HOLT and cfg.gpu_budget_nodes == 60 and cfg.max_step_groups == 1
    assert cfg.decode_bounds.max_groups == 4 and cfg.prefill_bounds.min_groups == 1
    assert config_from_spec(r1_spec, interval_s=30.0).interval_s == 30.0
    models = pool_models(r1_spec)
    assert models.nodes_per_group(Role.DECODE) == 18 and models.gpus_per_group(Role.PREFILL) == 32
    # A profile measured at another EP size is refused, naming both sizes.
    main(["perf", "-f", str(EXAMPLES / "deepseek-r1.yaml"), "--write-profile", str(tmp_path / "p.json")])
    planner = r1_spec.planner.model_copy(
        update={"perf_model": PerfModelSource.PROFILE, "profile_file": "p.json"}
    )
    decode = r1_spec.decode.model_copy(update={"expert_parallel": 72})
    spec = r1_spec.model_copy(update={"planner": planner, "decode": decode})
    with pytest.raises(
        PerfModelError, match=r"measured at expertParallel 144, spec\.decode\.expertParallel is 72"
    ):
        pool_models(spec, base_dir=tmp_path)
    same = r1_spec.model_copy(update={"planner": planner})
    assert pool_models(same, base_dir=tmp_path).decode.gpus_per_group == 144


def test_hardware_validates_against_the_named_gpu(capsys, tmp_path) -> None:
    """A layout too big for an H800 but fine on a GB200: refused as the manifest stands, modelled
    with --hardware gb200 (its own 4 GPUs per node, its memory)."""
    narrow = tmp_path / "narrow.yaml"
    text = (EXAMPLES / "deepseek-r1.yaml").read_text().replace("expertParallel: 144", "expertParallel: 8")
    narrow.write_text(text)
    assert main(["perf", "-f", str(narrow)]) == 1
    assert "does not fit in GPU memory" in capsys.readouterr().err
    assert main(["perf", "-f", str(narrow), "--hardware", "gb200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hardware"] == "gb200"
    assert out["decode_layout"]["expert_parallel"] == 8 and out["decode_layout"]["nodes_per_group"] == 2
    assert "calibration" in out


def test_pareto_trades_tokens_per_user_for_tokens_per_gpu(capsys) -> None:
    assert main(["perf", "-f", str(EXAMPLES / "deepseek-r1.yaml"), "--pareto", "--json"]) == 0
    points = json.loads(capsys.readouterr().out)["pareto"]
    assert len(points) >= 6
    per_user = [p["tokens_per_s_per_user"] for p in points]
    per_gpu = [p["tokens_per_s_per_gpu"] for p in points]
    assert per_user == sorted(per_user, reverse=True) and per_gpu == sorted(per_gpu)
    assert points[0]["batch_per_rank"] == 1 and not points[-1]["fits_kv"]
    assert main(["perf", "-f", str(EXAMPLES / "deepseek-r1.yaml"), "--pareto"]) == 0
    assert "tok/s/user" in capsys.readouterr().out


def test_the_planner_defaults_are_the_crds() -> None:
    """Settings a MoEDeployment carries default to PlannerSpec's values in the planner too."""
    from moeplane.api.spec import PlannerSpec
    from moeplane.planner.config import PlannerConfig, SlaTargets

    spec, cfg = PlannerSpec(), PlannerConfig(sla=SlaTargets(1000, 50))
    assert cfg.predictor is spec.predictor
    assert cfg.interval_s == spec.interval_seconds and cfg.cooldown_s == spec.cooldown_seconds
    assert cfg.max_step_groups == spec.max_step_groups and cfg.gpu_budget_nodes == spec.gpu_budget_nodes
