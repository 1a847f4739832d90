"""Real trace formats (Mooncake JSON lines with prefix hashes, Azure CSV) and the rate scaler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from moeplane.planner.sim.cases import REAL_TRACES, traces_dir
from moeplane.planner.sim.real_traces import load_trace, scale_rate
from moeplane.planner.sim.traces import TraceError

pytestmark = pytest.mark.unit


def mooncake(tmp_path: Path) -> Path:
    rows = [
        {"timestamp": 0, "input_length": 1500, "output_length": 10, "hash_ids": [0, 1, 2]},
        {"timestamp": 500, "input_length": 2000, "output_length": 20, "hash_ids": [0, 1, 3, 4]},
        {"timestamp": 250, "input_length": 600, "output_length": 0, "hash_ids": [7, 8]},
        {"timestamp": 900, "input_length": 1024, "output_length": 5, "hash_ids": [0, 1]},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mooncake_prefix_hits_come_from_the_blocks_seen_before(tmp_path) -> None:
    t = load_trace(mooncake(tmp_path))
    assert t.requests == 4 and t.arrival_s.tolist() == [0.0, 0.25, 0.5, 0.9]
    # Sorted by time: [0,1,2] new; [7,8] new; [0,1,3,4] hits 2 blocks; [0,1] hits both but keeps a token.
    assert t.cached.tolist() == [0, 0, 1024, 1023]
    assert t.osl_tokens.min() >= 1  # an output of 0 becomes 1 (the first token)
    load = t.load_between(0.0, 1.0, 5.0)
    assert load.cached_fraction == pytest.approx(2047 / (1500 + 600 + 2000 + 1024))


def test_azure_csv_and_bad_files_are_named(tmp_path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,10\n2023-11-16 18:17:04.0319600,3180,8\n"
    )
    t = load_trace(path)
    assert t.requests == 2 and t.arrival_s[1] == pytest.approx(0.052, abs=1e-6)
    assert t.isl_tokens.tolist() == [4808, 3180] and t.cached.sum() == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9,zero,1\n")
    with pytest.raises(TraceError, match=r"bad.csv:2: cannot parse"):
        load_trace(bad)
    (tmp_path / "x.txt").write_text("hello\n")
    with pytest.raises(TraceError, match="not a trace format"):
        load_trace(tmp_path / "x.txt")
    (tmp_path / "m.jsonl").write_text('{"timestamp": 1}\n')
    with pytest.raises(TraceError, match=r"m.jsonl:1: not a Mooncake request"):
        load_trace(tmp_path / "m.jsonl")


def test_scaling_keeps_the_mix_and_the_minute_shape(tmp_path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for minute in range(30):
        n = 20 if minute < 15 else 60  # a step in the rate at minute 15
        for t in np.sort(rng.uniform(minute * 60, (minute + 1) * 60, n)):
            rows.append(
                {
                    "timestamp": float(t * 1000),
                    "input_length": int(rng.integers(100, 4000)),
                    "output_length": 50,
                    "hash_ids": [],
                }
            )
    path = tmp_path / "shape.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = load_trace(path)
    big = scale_rate(raw, 40.5, shift_s=60.0)
    assert big.requests == pytest.approx(40.5 * raw.requests, rel=0.02)
    assert big.duration_s == raw.duration_s
    assert np.mean(big.isl_tokens) == pytest.approx(np.mean(raw.isl_tokens), rel=0.02)
    early = big.load_between(120, 780, 5).arrival_rate_per_s
    late = big.load_between(1020, 1680, 5).arrival_rate_per_s
    assert late / early == pytest.approx(3.0, rel=0.1)  # the step is still there
    with pytest.raises(TraceError, match="rate scale must be a positive number"):
        scale_rate(raw, 0.0)


@pytest.mark.skipif(
    not (traces_dir() / REAL_TRACES[0].file).exists(), reason="shared/traces is not beside the checkout"
)
def test_the_shared_traces_load_at_cluster_scale() -> None:
    for real in REAL_TRACES:
        raw = load_trace(traces_dir() / real.file)
        assert 8000 < raw.requests < 13000 and 3000 < raw.duration_s <= 3600
        scaled = scale_rate(raw, real.rate_scale)
        assert scaled.requests / scaled.duration_s > 250
    moon = load_trace(traces_dir() / "mooncake_conversation.jsonl")
    assert 0.3 < moon.cached.sum() / moon.isl_tokens.sum() < 0.45
