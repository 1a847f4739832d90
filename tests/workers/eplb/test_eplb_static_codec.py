"""Static mode's load files, the byte/JSON codecs, and the metrics on hand-worked examples."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from moeplane.workers.eplb import cli
from moeplane.workers.eplb.codec import (
    CodecError,
    decode_matrix,
    decode_placement,
    encode_matrix,
    encode_placement,
    placement_from_json,
    placement_to_json,
)
from moeplane.workers.eplb.metrics import (
    balancedness,
    balancedness_bound,
    bytes_moved,
    gpu_load,
    moved_slots,
)
from moeplane.workers.eplb.static import read_load_file, static_placement
from moeplane.workers.eplb.types import EplbError
from moeplane.workers.placement import Placement

pytestmark = pytest.mark.unit


def test_json_and_pt_load_files_give_the_same_placement(tmp_path: Path) -> None:
    load = (torch.arange(2 * 16, dtype=torch.float64).view(2, 16) % 7 + 1) ** 2
    (tmp_path / "a.json").write_text(json.dumps(load.tolist()))
    (tmp_path / "b.json").write_text(json.dumps({"load": load.tolist()}))
    torch.save(load.to(torch.int64), tmp_path / "c.pt")
    torch.save({"load": load}, tmp_path / "d.pt")
    placements = [
        static_placement(tmp_path / name, 20, 4, 2, 4, num_layers=2, num_logical=16)
        for name in ("a.json", "b.json", "c.pt", "d.pt")
    ]
    for p in placements[1:]:
        assert torch.equal(p.phy2log, placements[0].phy2log)
    assert placements[0].version == 0


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.json", "[[1, 2], [3]]", "equal-length lists"),
        ("x.json", "{not json", "is not valid JSON"),
        ("x.json", "[[1, -1]]", r"load\[0, 1\] is -1.0"),
        ("x.yaml", "[]", "must end in .json or .pt, not .yaml"),
        ("x.pt", "garbage", "is not a readable torch file"),
    ],
)
def test_bad_load_files_say_what_is_wrong(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(EplbError, match=message):
        read_load_file(tmp_path / name)


def test_load_file_shape_must_match_the_model(tmp_path: Path) -> None:
    (tmp_path / "l.json").write_text(json.dumps([[1, 2, 3]] * 2))
    with pytest.raises(EplbError, match="has 2 layers, the model has 58 MoE layers"):
        read_load_file(tmp_path / "l.json", num_layers=58)
    with pytest.raises(EplbError, match="has 3 experts per layer, the model has 256"):
        read_load_file(tmp_path / "l.json", num_logical=256)
    with pytest.raises(EplbError, match="does not exist"):
        read_load_file(tmp_path / "missing.json")


def test_codecs_round_trip() -> None:
    placement = Placement.from_phy2log(torch.tensor([[0, 1, 2, 1], [2, 2, 1, 0]]), 3, version=7)
    for decoded in (
        decode_placement(encode_placement(placement)),
        placement_from_json(placement_to_json(placement)),
    ):
        assert decoded.version == 7 and torch.equal(decoded.phy2log, placement.phy2log)
    matrix, head = decode_matrix(encode_matrix(torch.tensor([[5, -6]]), rank=3))
    assert matrix.tolist() == [[5, -6]] and head["rank"] == 3
    with pytest.raises(CodecError, match="expected 16 for int64"):
        decode_matrix(encode_matrix(torch.tensor([[5, -6]]))[:-1])
    with pytest.raises(CodecError, match="not a placement document"):
        placement_from_json({"phy2log": [[0, 5]], "numLogical": 2})


def test_metrics_on_a_worked_example() -> None:
    # 2 GPUs x 2 slots; expert 0 (load 8) replicated on both GPUs, experts 1 and 2 once.
    placement = Placement.from_phy2log(torch.tensor([[0, 1, 0, 2]]), 3)
    load = torch.tensor([[8.0, 2.0, 6.0]])
    per_gpu = gpu_load(load, placement, 2)
    assert per_gpu.tolist() == [[6.0, 10.0]]
    assert balancedness(per_gpu).tolist() == [pytest.approx(0.8)]
    assert balancedness(torch.zeros(1, 2)).tolist() == [1.0]
    # Best possible: hottest replica 6 (expert 2 or 8/2=4) vs mean 8 per GPU -> bound 1.0.
    assert balancedness_bound(load, 4, 2).tolist() == [1.0]
    swapped = Placement.from_phy2log(torch.tensor([[0, 2, 0, 1]]), 3)
    assert moved_slots(placement, swapped, 2).tolist() == [2]
    assert bytes_moved(placement, swapped, 2, expert_bytes=1.5e6) == 3_000_000
    reordered = Placement.from_phy2log(torch.tensor([[1, 0, 2, 0]]), 3)
    assert moved_slots(placement, reordered, 2).tolist() == [0]


def test_the_plan_command_writes_a_placement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    (tmp_path / "load.json").write_text(json.dumps([[9, 1, 1, 1, 4, 2, 2, 2]] * 3))
    args = parser.parse_args(
        [
            "eplb-plan",
            str(tmp_path / "load.json"),
            "--num-gpus",
            "2",
            "--redundant",
            "2",
            "--out",
            str(tmp_path / "p.json"),
        ]
    )
    assert args.func(args) == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    placement = placement_from_json(doc)
    assert placement.phy2log.shape == (3, 10) and doc["balancednessMean"] > 0.9
    bad = parser.parse_args(["eplb-plan", str(tmp_path / "load.json"), "--num-gpus", "3"])
    assert bad.func(bad) == 2
    assert "must be a multiple of num_gpus (3)" in capsys.readouterr().err
