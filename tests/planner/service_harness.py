"""Helpers of the planner service tests: an R1 deployment with its pools in the emulated API
server, request records in Redis, and the service behind a real HTTP server."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from aiohttp.test_utils import TestClient, TestServer
from moeplane.api.enums import Role
from moeplane.api.runtime import resolve_runtime
from moeplane.api.spec import parse_deployment
from moeplane.operator.builders.pools import build_pool
from moeplane.planner.kube import kube_adapters
from moeplane.planner.service.app import PlannerService, ServiceConfig

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.request_metrics import RequestRecord, RequestStatus
from tests.kube.cluster import EmulatedCluster

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
INTERVAL_S = 10.0


def r1_manifest(name: str) -> dict[str, Any]:
    obj = yaml.safe_load((ROOT / "examples" / "deepseek-r1.yaml").read_text())
    obj["metadata"] = {"name": name, "namespace": "default"}
    obj["spec"]["planner"]["intervalSeconds"] = INTERVAL_S
    return obj


def install(cluster: EmulatedCluster, obj: dict[str, Any]) -> None:
    """The MoEDeployment and its two pools as the operator would make them, all groups ready."""
    cluster.apply_object(copy.deepcopy(obj))
    deployment = parse_deployment(obj)
    document = resolve_runtime(deployment)
    name = obj["metadata"]["name"]
    for role in Role:
        replicas = deployment.spec.pool(role).replicas
        pool = build_pool(deployment, name, "default", role, document.pool(role), replicas)
        cluster.apply_object(pool)
        # Status goes through its subresource, as the operator writes it.
        cluster.kubectl(
            "patch",
            "moepool",
            pool["metadata"]["name"],
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"replicas": 1, "readyGroups": 1}}),
        )


async def write_requests(
    client: Any, keys: DeploymentKeys, rate_per_s: float, span_s: float, isl: int
) -> int:
    """Served requests at `rate_per_s` over the last `span_s` seconds, within the SLA, each ended
    by now (records reach the stream when their request ends, 2 s after it came)."""
    now = time.time()
    rng = np.random.default_rng(0)
    arrivals = np.sort(rng.uniform(now - span_s, now - 0.5, int(rate_per_s * span_s)))
    e2e_s = 2.0
    arrivals = arrivals[arrivals + e2e_s <= now]  # a record reaches the stream when its request ends
    async with client.pipeline(transaction=False) as pipe:
        for i, at in enumerate(arrivals):
            rec = RequestRecord(
                request_id=f"r{i}",
                model="deepseek-r1",
                status=RequestStatus.OK,
                isl_tokens=isl,
                osl_tokens=1000,
                ttft_ms=float(rng.uniform(300, 900)),
                itl_ms=float(rng.uniform(20, 35)),
                e2e_ms=e2e_s * 1e3,
                arrived_at_s=float(at),
            )
            pipe.xadd(keys.request_metrics(), rec.to_fields())
        await pipe.execute()
    return len(arrivals)


def pool_replicas(cluster: EmulatedCluster, name: str, role: Role) -> int:
    pool = cluster.get("moeplane.io/v1alpha1", "MoEPool", f"{name}-{role.value}", "default")
    assert pool is not None
    return int(pool["spec"]["replicas"])


class started:
    """A PlannerService (no interval loops: the test ticks) behind a real HTTP server."""

    def __init__(self, cluster: EmulatedCluster, redis_server: Any) -> None:
        self.cluster, self.redis_server = cluster, redis_server

    async def __aenter__(self) -> tuple[PlannerService, TestClient]:
        # The planner's own client (the operator's HttpKubeApi), as user `planner`; lists often.
        source, pools = kube_adapters(str(self.cluster.kubeconfig("planner")), poll_s=0.2)
        config = ServiceConfig(redis_url=self.redis_server.url, dashboard_token=TOKEN, tick=False)
        self.svc = PlannerService(config, source, pools)
        self.client = TestClient(TestServer(self.svc.app(), host="127.0.0.1"))
        await self.client.start_server()
        await asyncio.wait_for(self.svc.synced.wait(), 10)
        return self.svc, self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()  # the app's cleanup stops the service and closes its client


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
