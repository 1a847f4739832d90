"""The benchmark's cases: each a trace and the scenario (layout, SLA, planner settings) it is
replayed under. `bench/planner.py` and the tests build on these.

Synthetic traces (Poisson, bursty on/off, diurnal) run at 1,200 requests/s with 2,000-token
prompts and outputs. The two real one-hour traces of `shared/traces/` are scaled to DeepSeek-R1
cluster size with `real_traces.scale_rate`: Mooncake's conversations x100 (about 340 requests/s
of 12k-token prompts, 40% of them cached) and Azure's coding service x400 (about 1,000
requests/s of 2k-token prompts with short answers).

Mooncake's SLA is TTFT 30 s: with attention data-parallel, a prompt runs on one rank, and the
longest (up to 126k tokens) take tens of seconds alone, so a 2 s target would be a target for
nobody. Requests that cannot meet the SLA on an idle pool are counted apart (`truth.attainable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moeplane.planner.config import SlaTargets
from moeplane.planner.sim.real_traces import load_trace, mean_rate_per_s, scale_rate
from moeplane.planner.sim.scenario import EXAMPLE_MANIFEST, Scenario, load_scenario, synthetic_traces
from moeplane.planner.sim.traces import LengthDist, Trace

TRACES_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
SYNTHETIC_RATE_PER_S = 1200.0
SYNTHETIC_LENGTHS = LengthDist(2000, 0.6, 16, 16384)
SLA = SlaTargets(ttft_ms=2000.0, itl_ms=50.0, percentile=99.0)
WARMUP_S = 900.0


@dataclass(frozen=True)
class RealTrace:
    name: str
    file: str
    rate_scale: float
    sla: SlaTargets


REAL_TRACES = (
    RealTrace("mooncake", "mooncake_conversation.jsonl", 100.0, SlaTargets(30000.0, 50.0, 99.0)),
    RealTrace("azure", "azure_llm_code_2023.csv", 400.0, SLA),
)


@dataclass(frozen=True)
class Case:
    trace: Trace
    scenario: Scenario
    note: str

    @property
    def name(self) -> str:
        return self.trace.name


def traces_dir() -> Path:
    """`shared/traces` beside the checkout (the repository's parent holds `shared/`)."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        for candidate in (base / "shared" / "traces", base.parent / "shared" / "traces"):
            if candidate.is_dir():
                return candidate
    return TRACES_DIR


def synthetic_cases(scored_s: float, seed: int = 0, manifest: Path = EXAMPLE_MANIFEST) -> list[Case]:
    scenario = load_scenario(manifest, sla=SLA, warmup_s=WARMUP_S)
    traces = synthetic_traces(
        SYNTHETIC_RATE_PER_S,
        WARMUP_S + scored_s,
        isl=SYNTHETIC_LENGTHS,
        osl=SYNTHETIC_LENGTHS,
        seed=seed,
        warmup_s=WARMUP_S,
    )
    return [Case(t, scenario, t.description) for t in traces.values()]


def file_case(
    path: Path,
    rate_scale: float,
    sla: SlaTargets = SLA,
    name: str | None = None,
    seed: int = 0,
    manifest: Path = EXAMPLE_MANIFEST,
) -> Case:
    """A trace file (Mooncake, Azure or moeplane CSV) at `rate_scale` times its rate."""
    raw = load_trace(path, name)
    trace = scale_rate(raw, rate_scale, seed=seed, name=name or raw.name)
    scenario = load_scenario(manifest, sla=sla, warmup_s=min(WARMUP_S, trace.duration_s / 4))
    note = (
        f"{path.name} x{rate_scale:g}: {mean_rate_per_s(raw):.2f} -> {mean_rate_per_s(trace):.0f} req/s, "
        f"SLA TTFT {sla.ttft_ms:g} ms ITL {sla.itl_ms:g} ms p{sla.percentile:g}"
    )
    return Case(trace, scenario, note)


def real_cases(seed: int = 0) -> list[Case]:
    base = traces_dir()
    return [file_case(base / r.file, r.rate_scale, r.sla, r.name, seed) for r in REAL_TRACES]
