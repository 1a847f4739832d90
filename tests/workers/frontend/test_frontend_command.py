"""`moeplane frontend` as the operator's Deployment runs it: configured by environment, stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from moeplane.api.runtime import resolve_runtime
from moeplane.operator.builders.configmaps import engine_json
from moeplane.workers.embedded.local_redis import LocalRedis
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest
from moeplane.workers.net import free_port

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_frontend_command_serves_from_env_and_stops_on_sigterm(
    tmp_path: Path, redis_server: LocalRedis
) -> None:
    # The engine ConfigMap's document, as the operator writes it.
    dep = load_manifest(DEFAULT_MANIFEST)
    name = f"fe-{uuid.uuid4().hex[:6]}"
    dep = dep.model_copy(update={"metadata": dep.metadata.model_copy(update={"name": name})})
    document = resolve_runtime(dep, namespace="test")
    model = document.model.model_copy(update={"served_model_name": "tiny-chat"})
    engine = tmp_path / "engine.json"
    engine.write_text(engine_json(document.model_copy(update={"model": model})))
    port = free_port()
    env = {**os.environ, "MOEPLANE_ENGINE_CONFIG": str(engine), "MOEPLANE_REDIS_URL": redis_server.url,
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "moeplane", "frontend", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"serving 'tiny-chat' on http://127.0.0.1:{port}/v1" in first, first
        url = f"http://127.0.0.1:{port}"
        assert _get(url + "/v1/models")[1]["data"][0]["id"] == "tiny-chat"
        status, health = _get(url + "/health")
        assert status == 503 and health["status"] == "unavailable"  # no worker group registered
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "moeplane frontend: stopped" in out


def test_frontend_command_names_missing_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOEPLANE_")}
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "moeplane", "frontend"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1 and "set MOEPLANE_ENGINE_CONFIG" in run.stderr
    bad = tmp_path / "engine.json"
    document = json.loads(engine_json(resolve_runtime(load_manifest(DEFAULT_MANIFEST))))
    document["serving"]["maxNumSeqs"] = 0
    del document["model"]["architecture"]
    bad.write_text(json.dumps(document))
    run = subprocess.run([sys.executable, "-m", "moeplane", "frontend", "--engine-config", str(bad),
                          "--redis-url", "redis://127.0.0.1:1/0"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip() == (
        f"moeplane frontend: engine config {bad}: model.architecture: is required; serving.maxNumSeqs: "
        "must be greater than 0 (got 0)"
    )
    assert time.monotonic() - started < 60
