"""The chart's generated files (values.yaml, values.schema.json, crds/) match their sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from moeplane.codegen import chart as helmvalues
from moeplane.codegen.chart import ChartValues
from moeplane.codegen.crds import rendered_files
from tests.charts.chartkit import CHART_DIR, ROOT, chart

pytestmark = pytest.mark.unit


def test_generated_files_are_up_to_date() -> None:
    stale = helmvalues.stale_files(CHART_DIR)
    assert not stale, f"stale: {[str(p) for p in stale]}; run `python -m moeplane.codegen.chart` (make crds)"


def test_chart_crds_are_identical_to_the_top_level_crds() -> None:
    top = {p.name: p.read_text() for p in sorted((ROOT / "crds").glob("*.yaml"))}
    ours = {p.name: p.read_text() for p in sorted((CHART_DIR / "crds").iterdir())}
    assert ours == top
    assert set(top) == set(rendered_files())


def test_helm_sees_the_crds_and_the_schema() -> None:
    crds = {c["filename"].removeprefix("moeplane/"): c["data"] for c in chart().crds}
    assert crds == {f"crds/{name}": text for name, text in rendered_files().items()}
    assert chart().schema == json.loads((CHART_DIR / "values.schema.json").read_text())


def test_values_yaml_holds_the_model_defaults() -> None:
    on_disk = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert on_disk == ChartValues().model_dump(by_alias=True, mode="json")
    assert chart().values == on_disk
    ChartValues.model_validate(on_disk)  # and they are valid


def test_check_mode_finds_drift_and_write_repairs_it(tmp_path: Path) -> None:
    copy = tmp_path / "moeplane"
    shutil.copytree(CHART_DIR, copy)
    assert helmvalues.main(["--check", "--chart-dir", str(copy)]) == 0

    (copy / "crds" / "moepool.yaml").write_text("# edited by hand\n")
    (copy / "crds" / "stray.yaml").write_text("kind: Stray\n")
    (copy / "values.schema.json").unlink()
    stale = {p.relative_to(copy).as_posix() for p in helmvalues.stale_files(copy)}
    assert stale == {"crds/moepool.yaml", "crds/stray.yaml", "values.schema.json"}
    assert helmvalues.main(["--check", "--chart-dir", str(copy)]) == 1

    assert helmvalues.main(["--chart-dir", str(copy)]) == 0
    assert helmvalues.stale_files(copy) == []
    assert not (copy / "crds" / "stray.yaml").exists()


def test_every_values_field_is_documented() -> None:
    """values.yaml is the chart's documentation: every key carries a description."""
    missing = []

    def walk(schema: dict, path: str) -> None:
        for key, sub in (schema.get("properties") or {}).items():
            if not sub.get("description"):
                missing.append(f"{path}.{key}")
            if path.count(".") < 3 and not path.startswith(".deployments"):
                walk(sub, f"{path}.{key}")

    walk(helmvalues.values_schema(), "")
    assert not missing
