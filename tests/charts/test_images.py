"""The Dockerfiles: what they copy, whom they run as, and a rehearsal of their build stage.

No Docker runs on the CI machines, so the build stage is rehearsed: the build context the
Dockerfile and its .dockerignore allow is assembled, and `pip wheel --no-deps` runs on it as the
`build` stage does; the wheel must hold every subpackage and the `moeplane` command.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from moeplane.codegen.chart import ChartValues
from tests.charts.chartkit import CHART_DIR, ROOT

IMAGES = ROOT / "charts" / "images"
DOCKERFILES = ("operator.Dockerfile", "worker.Dockerfile")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM this instruction belongs to; -1 before the first FROM


def parse(path: Path) -> list[Instruction]:
    """Instructions with line continuations joined; heredoc bodies (`<<NAME` ... `NAME`) skipped."""
    out: list[Instruction] = []
    stage = -1
    lines = iter(path.read_text().splitlines())
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        keyword, _, args = line.partition(" ")
        heredoc = re.search(r"<<-?'?(\w+)'?", args)
        if heredoc:
            for body in lines:
                if body.strip() == heredoc.group(1):
                    break
        if keyword.upper() == "FROM":
            stage += 1
        out.append(Instruction(keyword.upper(), args.strip(), stage))
    return out


def package_folders() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(pyproject["tool"]["setuptools"]["package-dir"].values())


def copied_sources(instructions: list[Instruction]) -> set[str]:
    sources = set()
    for ins in instructions:
        if ins.keyword == "COPY" and not ins.args.startswith("--from"):
            sources |= {s.rstrip("/") for s in ins.args.split()[:-1]}
    return sources


@pytest.mark.unit
@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_copies_exactly_the_package(dockerfile: str) -> None:
    instructions = parse(IMAGES / dockerfile)
    assert copied_sources(instructions) == {"pyproject.toml", "README.md"} | package_folders()
    ignore = (IMAGES / f"{dockerfile}.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore and allowed == copied_sources(instructions)


@pytest.mark.unit
@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_runs_as_a_numeric_non_root_user(dockerfile: str) -> None:
    instructions = parse(IMAGES / dockerfile)
    assert instructions[0].keyword == "ARG" and (IMAGES / dockerfile).read_text().startswith("# syntax=")
    last = max(i.stage for i in instructions)
    users = [i.args for i in instructions if i.keyword == "USER" and i.stage == last]
    assert users, f"{dockerfile}: the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit())


@pytest.mark.unit
def test_control_plane_image_matches_the_chart() -> None:
    instructions = parse(IMAGES / "operator.Dockerfile")
    user = next(i.args for i in reversed(instructions) if i.keyword == "USER")
    pod = ChartValues().pod_security_context
    assert user == f"{pod['runAsUser']}:{pod['runAsGroup']}"
    assert next(i.args for i in instructions if i.keyword == "ENTRYPOINT") == '["moeplane"]'
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert chart["appVersion"] == pyproject["project"]["version"], "image tags default to appVersion"


@pytest.mark.unit
def test_worker_image_takes_its_torch_from_the_base_image() -> None:
    instructions = parse(IMAGES / "worker.Dockerfile")
    assert instructions[0].keyword == "ARG" and instructions[0].args.startswith("BASE_IMAGE=")
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert froms and all(f.split()[0] == "${BASE_IMAGE}" for f in froms)
    # Nothing installs a torch of its own over the base image's.
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert not re.search(r"pip install[^;&]*\btorch\b", runs)


@pytest.mark.unit
def test_worker_image_runs_the_frontend_the_operator_asks_for() -> None:
    """The operator's frontend container gives only args; the worker image's entrypoint must make
    them a `moeplane` command that exists, with flags it accepts."""
    from moeplane.api.spec import parse_deployment
    from moeplane.operator.builders.frontend import build_frontend_deployment
    from moeplane.operator.config import OperatorConfig

    from moeplane.cli import build_parser

    instructions = parse(IMAGES / "worker.Dockerfile")
    last = max(i.stage for i in instructions)
    entrypoints = [i.args for i in instructions if i.keyword == "ENTRYPOINT" and i.stage == last]
    assert entrypoints == ['["moeplane"]']
    manifest = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    built = build_frontend_deployment(parse_deployment(manifest), "tiny", "default", OperatorConfig())
    (container,) = built["spec"]["template"]["spec"]["containers"]
    assert "command" not in container
    args = build_parser().parse_args(container["args"])
    assert container["args"][0] == "frontend" and args.host == "0.0.0.0"


@pytest.mark.integration
def test_build_stage_makes_a_complete_wheel(tmp_path: Path) -> None:
    """The `build` stage, rehearsed on the context the Dockerfile and its .dockerignore allow."""
    context = tmp_path / "context"
    context.mkdir()
    for source in copied_sources(parse(IMAGES / "operator.Dockerfile")):
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, context / source)
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = wheels.glob("moeplane-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for package in ("moeplane", *(f"moeplane/{p}" for p in package_folders() - {"moeplane"})):
        # operator/ is a namespace portion (no __init__.py), so check for any of its modules.
        assert any(n.startswith(f"{package}/") and n.endswith(".py") for n in names), (
            f"the image would lack {package}"
        )
    assert "moeplane/cli.py" in names and "moeplane/operator/cli.py" in names
    assert re.search(r"^moeplane = moeplane\.cli:main$", entry_points, re.M)
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]
