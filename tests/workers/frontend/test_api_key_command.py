"""`moeplane frontend` with an API key from MOEPLANE_API_KEY or `--api-key`: 401 without it (OpenAI
error body, request id), served with it, /health and /metrics open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


def _get(url: str, key: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.mark.parametrize("source", ["env", "flag"])
def test_frontend_requires_the_api_key(tmp_path: Path, redis_server: LocalRedis, source: str) -> None:
    # The engine ConfigMap's document, as the operator writes it.
    dep = load_manifest(DEFAULT_MANIFEST)
    name = f"key-{uuid.uuid4().hex[:6]}"
    dep = dep.model_copy(update={"metadata": dep.metadata.model_copy(update={"name": name})})
    document = resolve_runtime(dep, namespace="test")
    model = document.model.model_copy(update={"served_model_name": "tiny"})
    engine = tmp_path / "engine.json"
    engine.write_text(engine_json(document.model_copy(update={"model": model})))
    port = free_port()
    env = {**os.environ, "MOEPLANE_ENGINE_CONFIG": str(engine), "MOEPLANE_REDIS_URL": redis_server.url,
           "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "moeplane", "frontend", "--port", str(port)]
    if source == "env":
        env["MOEPLANE_API_KEY"] = "k-env"
    else:
        env["MOEPLANE_API_KEY"] = "ignored"  # the flag wins
        args += ["--api-key", "k-flag"]
    key = f"k-{source}"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        assert "serving 'tiny'" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        for bad in (None, "wrong", "ignored" if source == "flag" else "k-flag"):
            status, headers, body = _get(url + "/v1/models", bad)
            err = json.loads(body)["error"]
            assert status == 401 and err["code"] == "invalid_api_key" and headers["X-Request-Id"]
        status, _, body = _get(url + "/v1/models", key)
        assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny"
        assert _get(url + "/health")[0] == 503  # open (no worker group: 503, not 401)
        assert _get(url + "/metrics")[0] == 200
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
