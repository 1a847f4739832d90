"""The planner service against the emulated API server (user `planner`) and a real redis-server:
observe the request stream, decide, PATCH the MoEPool scale subresource, record the decision;
resume after a restart without flapping; the dashboard API (what-if, Apply with its token)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from moeplane.api.enums import Role
from moeplane.planner.service.app import PlannerService

from moeplane.bus.keys import DeploymentKeys
from tests.kube.cluster import EmulatedCluster
from tests.planner.service_harness import (
    INTERVAL_S,
    TOKEN,
    install,
    pool_replicas,
    r1_manifest,
    started,
    wait_for,
    write_requests,
)

pytestmark = pytest.mark.integration


async def test_observe_decide_scale_and_resume(kube_crds: EmulatedCluster, redis_server: Any) -> None:
    name = "svc-r1"
    install(kube_crds, r1_manifest(name))
    keys = DeploymentKeys("default", name)
    redis = aioredis.from_url(redis_server.url)
    await redis.delete(keys.request_metrics(), keys.planner_decisions())
    # ~60 req/s of 8k-token prompts: more than one prefill group (EP32) can take within 2 s TTFT.
    await write_requests(redis, keys, 60.0, 3 * INTERVAL_S, 8192)

    async with started(kube_crds, redis_server) as (svc, client):
        await wait_for(lambda: ("default", name) in svc.deployments)
        planner = svc.deployments[("default", name)]
        result = await planner.tick()
        assert result is not None
        decision = result.decision
        assert decision.prefill.desired_groups == 2  # maxStepGroups 1 from 1
        assert result.applied
        assert pool_replicas(kube_crds, name, Role.PREFILL) == 2
        assert pool_replicas(kube_crds, name, Role.DECODE) == decision.decode.desired_groups
        assert any("sized" in str(r) for r in decision.reasons)

        dep = kube_crds.get("moeplane.io/v1alpha1", "MoEDeployment", name, "default")
        assert dep is not None
        last = dep["status"]["lastDecision"]
        assert last["prefillReplicas"] == 2 and last["applied"] is True and last["reason"]

        stream = await redis.xrange(keys.planner_decisions())
        assert len(stream) == 1
        assert json.loads(stream[0][1][b"json"])["prefill"]["desiredGroups"] == 2

        metrics = await (await client.get("/metrics")).text()
        assert (
            'moeplane_planner_desired_replicas{deployment="svc-r1",namespace="default",pool="prefill"} 2.0'
            in metrics
        )
        assert "moeplane_planner_observed_requests_per_second" in metrics
        listing = await (await client.get("/api/deployments")).json()
        assert [d["name"] for d in listing["deployments"]] == [name]
        assert (await client.get("/healthz")).status == 200

    # A restart: the new service derives its state from the stream and the CR. The pool is at 2
    # and the cooldown restarts from status.lastDecision.at: no flapping back to 1.
    async with started(kube_crds, redis_server) as (svc, _):
        await wait_for(lambda: ("default", name) in svc.deployments)
        planner = svc.deployments[("default", name)]
        result = await planner.tick()
        assert result is not None
        assert result.decision.prefill.current_groups == 2
        assert result.decision.prefill.desired_groups >= 2
        assert planner.planner.state.ticks > 1  # warmed up from the stream, not from scratch
        assert pool_replicas(kube_crds, name, Role.PREFILL) == result.decision.prefill.desired_groups
    await redis.aclose()


async def test_dashboard_api_whatif_and_apply(
    service: tuple[PlannerService, TestClient], kube_crds: EmulatedCluster, redis_server: Any
) -> None:
    svc, client = service
    name = "dash-r1"
    install(kube_crds, r1_manifest(name))
    keys = DeploymentKeys("default", name)
    redis = aioredis.from_url(redis_server.url)
    await redis.delete(keys.request_metrics(), keys.planner_decisions())
    await write_requests(redis, keys, 20.0, 60.0, 4096)
    await wait_for(lambda: ("default", name) in svc.deployments)
    await svc.deployments[("default", name)].tick()

    page = await client.get("/dashboard")
    assert page.status == 200 and "plotly.min.js" in await page.text()
    js = await client.get("/static/plotly.min.js")
    assert js.status == 200 and len(await js.read()) > 1_000_000

    series = await (await client.get(f"/api/deployments/default/{name}/series")).json()
    assert sum(b["requests"] for b in series["buckets"]) > 0
    assert series["decisions"] and series["sla"]["ttftMs"] == 2000
    assert set(series["eplb"]) == {"prefill", "decode"}

    url = f"/api/deployments/default/{name}"
    whatif = await client.post(f"{url}/whatif", json={"ttftMs": 500, "windowSeconds": 60})
    assert whatif.status == 200, await whatif.text()
    body = await whatif.json()
    assert body["requests"] > 0
    for side in ("current", "proposed"):
        assert 0 <= body[side]["attainment"] <= 1 and body[side]["gpusMean"] > 0

    bad = await client.post(f"{url}/whatif", json={"ttftMs": -3})
    assert bad.status == 400 and (await bad.json())["field"] == "ttftMs"
    for window in ("soon", 1e9):
        bad = await client.post(f"{url}/whatif", json={"windowSeconds": window})
        assert bad.status == 400 and (await bad.json())["field"] == "windowSeconds"
    not_json = await client.post(f"{url}/whatif", data=b"{", headers={"content-type": "application/json"})
    assert not_json.status == 400 and (await not_json.json())["field"] == "body"
    crossing = await client.post(
        f"{url}/apply", json={"decodeMinReplicas": 9}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert crossing.status == 400 and (await crossing.json())["field"] == "decodeMinReplicas"

    refused = await client.post(f"{url}/apply", json={"itlMs": 40})
    assert refused.status == 401
    wrong = await client.post(f"{url}/apply", json={"itlMs": 40}, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    dep = kube_crds.get("moeplane.io/v1alpha1", "MoEDeployment", name, "default")
    assert dep is not None and dep["spec"]["sla"]["itlMs"] == 50

    ok = await client.post(
        f"{url}/apply",
        json={"itlMs": 40, "predictor": "kalman"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert ok.status == 200, await ok.text()
    dep = kube_crds.get("moeplane.io/v1alpha1", "MoEDeployment", name, "default")
    assert dep is not None
    assert dep["spec"]["sla"]["itlMs"] == 40 and dep["spec"]["planner"]["predictor"] == "kalman"
    audit = json.loads(dep["metadata"]["annotations"]["moeplane.io/last-sla-change"])
    assert audit["patch"] == {"sla": {"itlMs": 40}, "planner": {"predictor": "kalman"}}
    events = [json.loads(f[b"json"]) for _, f in await redis.xrange(keys.planner_decisions())]
    assert [e["kind"] for e in events] == ["decision", "sla_change"]
    # The watch brings the change to the planner: its config follows the CR.
    await wait_for(lambda: svc.deployments[("default", name)].config.sla.itl_ms == 40)

    # Turning the planner off, or deleting the deployment, takes it out of the service.
    kube_crds.kubectl(
        "patch", "moedeployment", name, "--type=merge", "-p", '{"spec":{"planner":{"enabled":false}}}'
    )
    await wait_for(lambda: ("default", name) not in svc.deployments)
    kube_crds.kubectl(
        "patch", "moedeployment", name, "--type=merge", "-p", '{"spec":{"planner":{"enabled":true}}}'
    )
    await wait_for(lambda: ("default", name) in svc.deployments)
    kube_crds.kubectl("delete", "moedeployment", name)
    await wait_for(lambda: ("default", name) not in svc.deployments)
    assert (await client.get(f"{url}/series")).status == 404
    await redis.aclose()
