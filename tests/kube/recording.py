"""RBAC from observed use: the API calls a component makes in its own test suite, recorded.

A component's suite (`tests/operator/`, `tests/planner/`) runs its component against the emulated
API server under the component's own user. Every distinct (verb, group, resource[/subresource])
that user calls there is checked against the suite's committed recording,
`tests/<component>/api_calls.json`: a call the file lacks fails the test that made it. With
`MOEPLANE_RECORD_API_CALLS=1` nothing fails and, at the end of the run, each recording is
rewritten to exactly what the run observed, provided the run held the component's whole suite
and nothing failed (a partial run would drop calls that other tests make).

The Helm chart's tests read the committed files: the chart's ClusterRoles must grant each recorded
call and nothing beyond them (and Kopf's own needs).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORD_ENV = "MOEPLANE_RECORD_API_CALLS"

Call = tuple[str, str, str]  # (verb, API group, resource[/subresource]), as RBAC names a request

# Component (its suite's folder under tests/, and its user in the emulator) -> committed recording.
RECORDINGS: dict[str, Path] = {
    "operator": ROOT / "tests" / "operator" / "api_calls.json",
    "planner": ROOT / "tests" / "planner" / "api_calls.json",
}


class RecordingError(ValueError):
    """A recording file that is not a JSON list of {verb, group, resource} objects."""


def load_calls(path: Path) -> set[Call]:
    """The calls of a recording file; a malformed entry is refused with its index and the field."""
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RecordingError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise RecordingError(f"{path}: expected a JSON list of {{verb, group, resource}} objects")
    calls: set[Call] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise RecordingError(f"{path}[{i}]: expected an object, got {type(entry).__name__}")
        missing = sorted({"verb", "group", "resource"} - set(entry))
        if missing:
            raise RecordingError(f"{path}[{i}]: missing {missing}")
        values = (entry["verb"], entry["group"], entry["resource"])
        if not all(isinstance(v, str) for v in values) or not values[0] or not values[2]:
            raise RecordingError(f"{path}[{i}]: verb and resource must be non-empty strings: {entry}")
        calls.add(values)
    return calls


def dump_calls(calls: Iterable[Call]) -> str:
    """A recording's text: sorted, one call per line, so a diff shows exactly what changed."""
    rows = [json.dumps({"verb": v, "group": g, "resource": r}) for v, g, r in sorted(set(calls))]
    return "[\n" + ",\n".join(f"  {row}" for row in rows) + "\n]\n"


def shown(path: Path) -> str:
    """A path as messages name it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def component_of(test_path: Path) -> str | None:
    """The component whose suite holds a test file (`tests/operator/...` -> "operator")."""
    try:
        parts = test_path.resolve().relative_to(ROOT / "tests").parts
    except ValueError:
        return None
    return parts[0] if parts and parts[0] in RECORDINGS else None


@dataclass
class ApiCallRecorder:
    """The calls observed per component in one pytest run, checked against the committed files."""

    recordings: Mapping[str, Path] = field(default_factory=lambda: dict(RECORDINGS))
    recording: bool = False
    observed: dict[str, set[Call]] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> ApiCallRecorder:
        return cls(recording=os.environ.get(RECORD_ENV, "") not in ("", "0"))

    def committed(self, component: str) -> set[Call] | None:
        path = self.recordings[component]
        return load_calls(path) if path.exists() else None

    def observe(self, component: str, calls: Iterable[Call]) -> list[Call]:
        """Add one test's calls; return those the committed recording lacks (none when recording)."""
        calls = set(calls)
        self.observed.setdefault(component, set()).update(calls)
        if self.recording:
            return []
        return sorted(calls - (self.committed(component) or set()))

    def problem(self, component: str, unrecorded: list[Call]) -> str:
        path = shown(self.recordings[component])
        state = "lacks" if self.recordings[component].exists() else "does not exist yet, so it lacks"
        return (
            f"the {component} made API calls that {path} {state}: {unrecorded}. If they are intended, "
            f"re-record with `{RECORD_ENV}=1 .venv/bin/pytest tests/{component}` and commit the file "
            f"(the Helm chart's ClusterRole must then grant them: tests/charts/test_chart_rbac.py)."
        )

    def write(self, refused: Mapping[str, str] | None = None) -> list[str]:
        """Rewrite each recording observed in this run (recording mode), except those `refused`
        names with the reason (a partial or failing run must not shrink a recording); returns
        what it did, one line per recording."""
        if not self.recording:
            return []
        refused = refused or {}
        for component, calls in sorted(self.observed.items()):
            path = self.recordings[component]
            if component in refused:
                self.written.append(f"{shown(path)} NOT rewritten: {refused[component]}")
                continue
            before = load_calls(path) if path.exists() else set()
            path.write_text(dump_calls(calls))
            added, removed = sorted(calls - before), sorted(before - calls)
            self.written.append(
                f"{shown(path)}: {len(calls)} calls recorded"
                + (f"; added {added}" if added else "")
                + (f"; removed {removed}" if removed else "")
            )
        return self.written


def partial_run(session: pytest.Session, component: str) -> str | None:
    """Why this run cannot stand for the component's whole suite, or None when it can."""
    if session.testsfailed:
        return f"{session.testsfailed} tests failed"
    option = session.config.option
    if getattr(option, "keyword", "") or getattr(option, "markexpr", ""):
        return "tests were selected with -k or -m"
    suite = ROOT / "tests" / component
    ran = {Path(str(item.path)).resolve() for item in session.items}
    missing = sorted(p.name for p in suite.rglob("test_*.py") if p.resolve() not in ran)
    return f"the run left out {missing}" if missing else None


class RecorderPlugin:
    """Writes the recordings when the run ends and says what it wrote in the terminal summary."""

    def __init__(self, recorder: ApiCallRecorder) -> None:
        self.recorder = recorder

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        refused = {c: why for c in self.recorder.observed if (why := partial_run(session, c)) is not None}
        self.recorder.write(refused)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for line in self.recorder.written:
            terminalreporter.write_line(f"moeplane API-call recording: {line}")


_KEY = pytest.StashKey[ApiCallRecorder]()


def recorder_for(config: pytest.Config) -> ApiCallRecorder:
    """The run's recorder, created (and its end-of-run plugin registered) on first use, so any suite
    that uses the `kube_cluster` fixture records without extra conftest wiring."""
    if _KEY not in config.stash:
        recorder = ApiCallRecorder.from_env()
        config.stash[_KEY] = recorder
        config.pluginmanager.register(RecorderPlugin(recorder), "moeplane-api-call-recorder")
    return config.stash[_KEY]
