"""`moeplane planner` as the chart runs it: a process with MOEPLANE_REDIS_URL and
MOEPLANE_DASHBOARD_TOKEN, /healthz and /api/deployments over HTTP, its own interval loop scaling
a pool, and a clean exit on SIGINT."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from moeplane.api.enums import Role

from moeplane.bus.keys import DeploymentKeys
from tests.kube.cluster import EmulatedCluster
from tests.planner.service_harness import install, pool_replicas, r1_manifest, write_requests

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        return json.loads(r.read())


async def test_planner_process_serves_and_scales(
    kube_crds: EmulatedCluster, redis_server: Any, tmp_path: Path
) -> None:
    name = "cli-r1"
    install(kube_crds, r1_manifest(name))
    keys = DeploymentKeys("default", name)
    redis = aioredis.from_url(redis_server.url)
    await redis.delete(keys.request_metrics(), keys.planner_decisions())
    await write_requests(redis, keys, 60.0, 30.0, 8192)
    await redis.aclose()

    port = free_port()
    env = {
        **kube_crds.env("planner"),
        "MOEPLANE_REDIS_URL": redis_server.url,
        "MOEPLANE_DASHBOARD_TOKEN": "t",
    }
    argv = [
        str(Path(sys.executable).parent / "moeplane"),
        "planner",
        "--host=127.0.0.1",
        f"--port={port}",
        "--namespace=default",
    ]
    log = tmp_path / "planner.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if get_json(f"{base}/healthz")["deployments"] == 1:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        # The first tick comes at once: the prefill pool goes from 1 to 2 groups.
        while pool_replicas(kube_crds, name, Role.PREFILL) != 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        import os as _os
        if _os.environ.get("PYSPY_DEBUG"):
            time.sleep(3)
            subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(proc.pid)], check=False)
        listing = get_json(f"{base}/api/deployments")
        assert [d["name"] for d in listing["deployments"]] == [name]
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
            assert b"moeplane_planner_desired_replicas" in r.read()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()
