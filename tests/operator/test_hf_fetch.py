"""The init container's command that fills the Hugging Face cache (`python -m moeplane.hfcache
fetch`), run as the pod runs it: a subprocess with HF_HOME on a cache directory laid out as
huggingface_hub lays it out. The Hub is never reached: HF_ENDPOINT points at a closed port, so any
attempt to use the network fails loudly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from moeplane.hfcache import marker

pytestmark = pytest.mark.unit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


def fake_cache(home: Path, repo: str = "org/model", files: tuple[str, ...] = ("config.json",)) -> Path:
    """A cache holding `repo` at COMMIT, with `main` pointing at it (as `hf download` leaves it)."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    for name in files:
        (snapshot / name).write_text("{}")
    return snapshot


def fetch(home: Path, *args: str, offline: bool) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "moeplane.hfcache", "fetch", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_offline_uses_the_cached_revision(tmp_path: Path) -> None:
    snapshot = fake_cache(tmp_path)
    for uri in ("hf://org/model", f"hf://org/model@{COMMIT}"):
        done = fetch(tmp_path, uri, offline=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{uri}: offline at {snapshot}"


def test_an_offline_miss_fails_naming_the_location_and_the_cache(tmp_path: Path) -> None:
    fake_cache(tmp_path)
    for uri in ("hf://org/other", "hf://org/model@v2"):
        done = fetch(tmp_path, uri, offline=True)
        assert done.returncode == 1
        assert done.stderr.strip() == (
            f"moeplane hfcache: {uri} is not in the Hugging Face cache at {tmp_path} and HF_HUB_OFFLINE is "
            "set: fill the cache first (e.g. `hf download` into the claim of spec.model.hfCache) or unset it"
        )


def test_a_completed_fetch_is_skipped_without_the_network(tmp_path: Path) -> None:
    snapshot = fake_cache(tmp_path)
    # Online and no marker: it must ask the Hub, which is unreachable here: a clear failure.
    done = fetch(tmp_path, "hf://org/model", offline=False)
    assert done.returncode == 1 and "hf://org/model: download into the Hugging Face cache at" in done.stderr
    # A complete earlier fetch left its marker: skipped, the Hub never asked.
    marker(tmp_path, "org/model", None, light=False).parent.mkdir(parents=True)
    marker(tmp_path, "org/model", None, light=False).write_text(str(snapshot))
    for args in (("hf://org/model",), ("--light", "hf://org/model")):
        done = fetch(tmp_path, *args, offline=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"hf://org/model: cached at {snapshot}"
    # A light fetch does not stand for the weights.
    other = fake_cache(tmp_path, "org/tok")
    marker(tmp_path, "org/tok", None, light=True).write_text(str(other))
    assert fetch(tmp_path, "--light", "hf://org/tok", offline=False).returncode == 0
    assert fetch(tmp_path, "hf://org/tok", offline=False).returncode == 1


@pytest.mark.parametrize(
    "uri,message",
    [
        ("pvc://claim/x", "pvc://claim/x: not a Hugging Face location"),
        ("hf://only-org", "expected hf://ORG/REPO"),
    ],
)
def test_bad_locations_are_refused(tmp_path: Path, uri: str, message: str) -> None:
    done = fetch(tmp_path, uri, offline=True)
    assert done.returncode == 1 and message in done.stderr
