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
from concurrent.futures import ThreadPoolExecutor
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


def _post(url: str, body: dict, timeout_s: float = 120) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, dict(resp.headers), json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.load(err)


def test_the_documents_queue_limit_gives_503_only_past_the_queue(
    tmp_path: Path, redis_server: LocalRedis
) -> None:
    """spec.serving.maxQueuedRequests reaches the Kubernetes frontend through engine.json: with no
    capacity (no group registered), two requests wait in the queue and the third, past it, gets
    503 with Retry-After at once while the two still wait."""
    proc, url = _start_queueing_frontend(tmp_path, redis_server)
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 4}
    pool = ThreadPoolExecutor(2)
    try:
        assert proc.stdout is not None
        assert "serving 'tiny'" in proc.stdout.readline()
        waiting = [pool.submit(_post, url + "/v1/completions", body) for _ in range(2)]
        _wait_queued(url, 2, waiting)
        status, headers, err = _post(url + "/v1/completions", body)
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert "2 requests are already queued (maxQueuedRequests 2)" in err["error"]["message"]
        assert not any(f.done() for f in waiting)  # still queued, not refused
        assert _get(url + "/health")[1]["queued_requests"] == 2
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        for f in waiting:  # with no drain timeout (the default) it refuses what still waits, at once
            status, _, err = f.result(timeout=30)
            assert status == 503 and "shutting down" in err["error"]["message"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pool.shutdown(wait=False, cancel_futures=True)
    assert proc.returncode == 0 and "moeplane frontend: stopped" in out


def _start_queueing_frontend(
    tmp_path: Path, redis_server: LocalRedis, *flags: str
) -> tuple[subprocess.Popen[str], str]:
    """`moeplane frontend` with no worker group and maxQueuedRequests 2: requests wait in its queue."""
    dep = load_manifest(DEFAULT_MANIFEST)
    name = f"fq-{uuid.uuid4().hex[:6]}"
    serving = dep.spec.serving.model_copy(update={"max_queued_requests": 2, "queue_timeout_seconds": 120})
    dep = dep.model_copy(update={
        "metadata": dep.metadata.model_copy(update={"name": name}),
        "spec": dep.spec.model_copy(update={"serving": serving}),
    })
    engine = tmp_path / "engine.json"
    engine.write_text(engine_json(resolve_runtime(dep, namespace="test")))
    port = free_port()
    env = {**os.environ, "MOEPLANE_ENGINE_CONFIG": str(engine), "MOEPLANE_REDIS_URL": redis_server.url,
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "moeplane", "frontend", "--port", str(port), *flags],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait_queued(url: str, n: int, waiting: list) -> None:
    deadline = time.monotonic() + 60
    while _get(url + "/health")[1]["queued_requests"] < n:
        assert time.monotonic() < deadline, f"{n} requests never queued"
        assert not any(f.done() for f in waiting), [f.result() for f in waiting if f.done()]
        time.sleep(0.05)


def test_a_stopping_frontend_drains_before_it_stops(tmp_path: Path, redis_server: LocalRedis) -> None:
    """With --shutdown-delay, SIGTERM turns /health to 503 `draining` while the frontend still takes
    requests (clients of the Service learn of a terminating pod late) and keeps what is queued;
    a second signal cuts the delay and the drain short: what still waits gets its 503."""
    proc, url = _start_queueing_frontend(
        tmp_path, redis_server, "--shutdown-delay", "600", "--drain-timeout", "600"
    )
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 4}
    pool = ThreadPoolExecutor(2)
    try:
        assert proc.stdout is not None
        assert "serving 'tiny'" in proc.stdout.readline()
        waiting = [pool.submit(_post, url + "/v1/completions", body)]
        _wait_queued(url, 1, waiting)
        proc.send_signal(signal.SIGTERM)
        assert "draining; still serving for 600 s" in proc.stdout.readline()
        status, health = _get(url + "/health")
        assert status == 503 and health["status"] == "draining", health
        assert _get(url + "/v1/models")[0] == 200  # still answering
        waiting.append(pool.submit(_post, url + "/v1/completions", body))  # still admitted
        _wait_queued(url, 2, waiting)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        for f in waiting:
            status, _, err = f.result(timeout=30)
            assert status == 503 and "shutting down" in err["error"]["message"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pool.shutdown(wait=False, cancel_futures=True)
    assert proc.returncode == 0 and "moeplane frontend: stopped" in out
