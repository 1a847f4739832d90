"""The recording of a component's API calls (tests/kube/recording.py): what fails, what is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.kube.recording import (
    RECORD_ENV,
    RECORDINGS,
    ROOT,
    ApiCallRecorder,
    RecordingError,
    component_of,
    dump_calls,
    load_calls,
)

pytestmark = pytest.mark.unit

CALLS = {("watch", "moeplane.io", "moedeployments"), ("patch", "moeplane.io", "moepools/status")}


def recorder(tmp_path: Path, recording: bool) -> ApiCallRecorder:
    return ApiCallRecorder(recordings={"operator": tmp_path / "api_calls.json"}, recording=recording)


def test_dump_and_load_round_trip_sorted(tmp_path: Path) -> None:
    path = tmp_path / "calls.json"
    path.write_text(dump_calls(CALLS))
    assert load_calls(path) == CALLS
    rows = json.loads(path.read_text())
    assert rows[0] == {"verb": "patch", "group": "moeplane.io", "resource": "moepools/status"}
    assert len(path.read_text().splitlines()) == len(CALLS) + 2  # one call per line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", r"not JSON"),
        ('{"verb": "get"}', r"expected a JSON list"),
        ('["get"]', r"\[0\]: expected an object, got str"),
        ('[{"verb": "get", "group": ""}]', r"\[0\]: missing \['resource'\]"),
        ('[{"verb": "", "group": "", "resource": "pods"}]', r"\[0\]: verb and resource must be non-empty"),
    ],
)
def test_malformed_recordings_are_refused_with_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "calls.json"
    path.write_text(text)
    with pytest.raises(RecordingError, match=message):
        load_calls(path)


def test_a_call_the_committed_file_lacks_is_reported(tmp_path: Path) -> None:
    rec = recorder(tmp_path, recording=False)
    rec.recordings["operator"].write_text(dump_calls(CALLS))
    assert rec.observe("operator", CALLS) == []
    extra = ("delete", "", "configmaps")
    assert rec.observe("operator", {*CALLS, extra}) == [extra]
    assert rec.write() == [] and load_calls(rec.recordings["operator"]) == CALLS  # never rewritten


def test_without_a_committed_file_every_call_is_reported(tmp_path: Path) -> None:
    rec = recorder(tmp_path, recording=False)
    assert rec.observe("operator", CALLS) == sorted(CALLS)
    message = rec.problem("operator", sorted(CALLS))
    assert "does not exist yet" in message and f"{RECORD_ENV}=1" in message


def test_recording_mode_rewrites_the_file_with_exactly_what_was_observed(tmp_path: Path) -> None:
    rec = recorder(tmp_path, recording=True)
    stale = ("get", "moeplane.io", "moedeployments/status")
    rec.recordings["operator"].write_text(dump_calls({stale}))
    assert rec.observe("operator", {next(iter(CALLS))}) == []
    assert rec.observe("operator", CALLS) == []
    (summary,) = rec.write()
    assert load_calls(rec.recordings["operator"]) == CALLS
    assert "2 calls recorded" in summary and f"removed {[stale]}" in summary and "added" in summary


def test_a_refused_recording_is_left_as_committed(tmp_path: Path) -> None:
    rec = recorder(tmp_path, recording=True)
    rec.recordings["operator"].write_text(dump_calls(CALLS))
    rec.observe("operator", {next(iter(CALLS))})
    (summary,) = rec.write({"operator": "2 tests failed"})
    assert "NOT rewritten: 2 tests failed" in summary
    assert load_calls(rec.recordings["operator"]) == CALLS


def test_the_suite_decides_the_component() -> None:
    assert component_of(ROOT / "tests" / "operator" / "test_x.py") == "operator"
    assert component_of(ROOT / "tests" / "planner" / "sub" / "test_y.py") == "planner"
    assert component_of(ROOT / "tests" / "charts" / "test_z.py") is None
    assert component_of(Path("/elsewhere/tests/operator/test_x.py")) is None
    assert set(RECORDINGS) == {"operator", "planner"}
