"""The embedded stack's pure parts: manifest -> plan, the Poisson schedule, the SLA report, the bar."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest
import yaml
from moeplane.api.enums import Role, WeightsFormat
from moeplane.api.errors import SpecInvalid
from moeplane.api.hf_config import arch_differences, read_hf_config
from moeplane.api.runtime import resolve_runtime
from moeplane.api.spec import MoEDeployment, SlaSpec, parse_deployment
from moeplane.workers.embedded.loadgen import Arrival, LoadSpec, Result, poisson_schedule
from moeplane.workers.embedded.plan import (
    DEFAULT_MANIFEST,
    EmbeddedPlanError,
    load_manifest,
    plan_from_deployment,
    read_manifest,
)
from moeplane.workers.embedded.progress import ProgressBar
from moeplane.workers.embedded.report import format_report, summarize

from tests.example_manifests import LOCAL_CHECKPOINT

pytestmark = pytest.mark.unit


def test_tiny_cpu_manifest_gives_one_prefill_and_one_decode_group_of_ep2() -> None:
    dep = load_manifest(DEFAULT_MANIFEST)
    plan = plan_from_deployment(dep)
    assert (plan.prefill.role, plan.prefill.ep_size, plan.prefill.num_groups) == (Role.PREFILL, 2, 1)
    assert (plan.decode.role, plan.decode.ep_size, plan.decode.num_groups) == (Role.DECODE, 2, 1)
    assert plan.decode.num_blocks_per_rank * plan.decode.block_size_tokens == 8192  # minKvTokensPerGpu
    assert plan.served_model == "tiny" and plan.keys.prefix == "moeplane:default/tiny:"
    assert plan.max_model_len == plan.arch.max_position_embeddings == 2048
    # The plan is the runtime document a pod of this deployment reads, and its limits are the manifest's.
    assert plan.document == resolve_runtime(dep)
    assert (plan.scheduler.max_num_batched_tokens, plan.scheduler.max_num_seqs) == (512, 64)
    assert plan.decode.layout == plan.document.pool(Role.DECODE)
    assert (plan.sla.ttft_ms, plan.sla.itl_ms, plan.sla.percentile) == (1000, 200, 90)
    aggregated = plan_from_deployment(dep, prefill_groups=0, decode_groups=2, max_model_len=512)
    assert aggregated.prefill.num_groups == 0 and aggregated.decode.num_ranks == 4
    assert aggregated.max_model_len == 512


def _with_model(dep: MoEDeployment, **changes: object) -> MoEDeployment:
    model = dep.spec.model.model_copy(update=changes)
    return dep.model_copy(update={"spec": dep.spec.model_copy(update={"model": model})})


def test_a_manifest_naming_only_a_checkpoint_directory_plans_from_it(tmp_path: Path, hf_checkpoint) -> None:
    checkpoint = hf_checkpoint("qwen3-moe")
    (tmp_path / "ckpt").symlink_to(checkpoint)
    manifest = yaml.safe_load(LOCAL_CHECKPOINT.read_text())
    manifest["spec"]["model"]["weights"]["uri"] = "./ckpt"  # relative: the manifest's folder
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    plan = plan_from_deployment(load_manifest(path))
    where = str(tmp_path / "ckpt")
    config = read_hf_config(checkpoint)
    assert arch_differences(config.arch, plan.arch) == []  # no preset: config.json's
    assert plan.arch.name == "ckpt"  # named after the directory
    assert plan.document.model.weights.uri == where == plan.weights == plan.tokenizer == plan.checkpoint
    assert plan.max_model_len == config.arch.max_position_embeddings == 512
    assert plan.decode.num_blocks_per_rank * plan.decode.block_size_tokens == 4096  # minKvTokensPerGpu
    # The planner reads the same manifest, with the same absolute directory.
    assert read_manifest(path)["spec"]["model"]["weights"]["uri"] == where


def test_plans_the_embedded_stack_cannot_run_name_the_field(tmp_path: Path) -> None:
    dep = load_manifest(DEFAULT_MANIFEST)
    weights = dep.spec.model.weights.model_copy(
        update={"format": WeightsFormat.SAFETENSORS, "uri": str(tmp_path / "w")}
    )
    # With a preset the checkpoint need not be visible to `moeplane validate`; here it must be.
    missing = rf"spec\.model\.weights\.uri: {tmp_path}/w: .* does not exist"
    with pytest.raises(EmbeddedPlanError, match=missing):
        plan_from_deployment(_with_model(dep, weights=weights, tokenizer="bytes"))
    no_tokenizer = rf"spec\.model\.tokenizer: {tmp_path}/tokenizer\.json: no tokenizer\.json"
    with pytest.raises(EmbeddedPlanError, match=no_tokenizer):
        plan_from_deployment(_with_model(dep, tokenizer=str(tmp_path)))
    r1 = yaml.safe_load((DEFAULT_MANIFEST.parent / "deepseek-r1.yaml").read_text())
    with pytest.raises(EmbeddedPlanError, match=r"spec\.hardware\.gpu is h800; the embedded stack runs on"):
        plan_from_deployment(parse_deployment(r1))
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(EmbeddedPlanError, match=rf"manifest {bad} is not valid YAML"):
        load_manifest(bad)
    # What `moeplane validate` refuses, the plan refuses with the same message.
    decode = dep.spec.decode.model_copy(update={"data_parallel_attention": 1})
    with pytest.raises(SpecInvalid, match=r"spec\.decode\.dataParallelAttention: 1 must equal expert"):
        plan_from_deployment(dep.model_copy(update={"spec": dep.spec.model_copy(update={"decode": decode})}))
    with pytest.raises(SpecInvalid, match=r"spec\.serving\.maxModelLen: 4096 exceeds the model's"):
        plan_from_deployment(dep, max_model_len=4096)
    with pytest.raises(EmbeddedPlanError, match="at least one decode group"):
        plan_from_deployment(dep, decode_groups=0)


def test_poisson_schedule_is_seeded_mixed_and_has_the_right_rate() -> None:
    spec = LoadSpec(num_requests=2000, rate_per_s=4.0, seed=3)
    arrivals = poisson_schedule(spec)
    assert arrivals == poisson_schedule(spec) and arrivals != poisson_schedule(LoadSpec(2000, 4.0, seed=4))
    assert all(b.at_s > a.at_s for a, b in itertools.pairwise(arrivals))
    assert arrivals[-1].at_s == pytest.approx(2000 / 4.0, rel=0.1)
    assert {a.prompt_tokens for a in arrivals} == set(spec.prompt_tokens)
    assert {a.max_tokens for a in arrivals} == set(spec.output_tokens)
    assert all(len(a.prompt.encode()) == a.prompt_tokens - 1 for a in arrivals)  # + BOS
    share = sum(a.prompt_tokens == 32 for a in arrivals) / len(arrivals)
    assert share == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="rate_per_s"):
        LoadSpec(rate_per_s=0)


def _result(ttft: float, itl: float, ok: bool = True, error: str = "") -> Result:
    a = Arrival(0.0, "x", 2, 8)
    if not ok:
        return Result(a, False, error)
    return Result(a, True, ttft_ms=ttft, itl_ms=itl, e2e_ms=ttft + 7 * itl, prompt_tokens=2, output_tokens=8)


def test_sla_report_percentiles_verdicts_and_errors() -> None:
    results = [_result(float(t), 10.0 + t / 100) for t in range(1, 101)]
    sla = SlaSpec(ttft_ms=95, itl_ms=10.5, percentile=90)
    report = summarize(results, duration_s=4.0, sla=sla)
    assert report.ttft is not None and report.itl is not None
    assert report.ttft.p50_ms == pytest.approx(50.5) and report.ttft.at_sla_ms == pytest.approx(90.1)
    assert report.ttft.met and not report.itl.met and not report.sla_met
    assert report.output_tokens_per_s == 200.0 and report.num_errors == 0
    text = format_report(report, "title")
    assert "TTFT ms" in text and "met" in text and "MISSED (1.04x target)" in text
    assert "200.0 output tokens/s" in text and "100/100 ok, 0 errors" in text

    failed = summarize([*results[:3], _result(0, 0, False, "HTTP 503: busy")] * 2, 1.0, sla)
    assert failed.num_errors == 2 and failed.errors == {"HTTP 503: busy": 2}
    assert "2 x HTTP 503: busy" in format_report(failed, "t") and "SLA NOT MET" in format_report(failed, "t")
    assert summarize([], 1.0, sla).ttft is None


def test_progress_bar_logs_every_tenth_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = ProgressBar(20, "load", out=out)
    for i in range(20):
        bar.update(ok=i != 5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("load [##############################] 20/20  1 errors")


def test_a_ranks_load_error_reaches_moeplane_up_as_its_own_message() -> None:
    from moeplane.workers.embedded.commands import model_load_error
    from moeplane.workers.model.weights import WeightError
    from ray.exceptions import RayTaskError

    cause = WeightError("/m/model-00005-of-00020.safetensors: cannot be opened as safetensors")
    raised = RayTaskError("RankWorker.start", "Traceback ...", cause).as_instanceof_cause()
    assert model_load_error(raised) is cause  # not Ray's traceback text
    assert model_load_error(RayTaskError("f", "tb", RuntimeError("a bug"))) is None
    assert model_load_error(RuntimeError("a bug")) is None
