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


async def test_overload_with_refusals_scales_decode_up(kube_crds: EmulatedCluster, redis_server: Any) -> None:
    """The issue's overload, replayed through the live observe path: concurrency 48 on the tiny
    CPU stack, 200 output tokens, 89 of 300 requests refused with 503 while decode's KV memory
    is full. Written to Redis the way the frontend and the group supervisor write them; the
    planner reads OSL 200 (not 1), counts the refusals as demand and misses, and grows decode."""
    import time

    import numpy as np
    import yaml
    from moeplane.api.enums import Role as R

    from moeplane.bus.registry import GroupState, WorkerGroup, WorkerRegistry
    from moeplane.bus.request_metrics import RequestMetricsWriter, RequestRecord, RequestStatus
    from tests.planner.service_harness import ROOT

    obj = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    obj["metadata"] = {"name": "overload", "namespace": "default"}
    install(kube_crds, obj)
    keys = DeploymentKeys("default", "overload")
    redis = aioredis.from_url(redis_server.url)
    await redis.delete(keys.request_metrics(), keys.planner_decisions(), keys.workers())
    now = time.time()
    rng = np.random.default_rng(1)
    writer = RequestMetricsWriter(redis, keys)
    arrivals = np.sort(rng.uniform(now - 72.0, now - 1.0, 300))
    refused = set(rng.choice(300, 89, replace=False).tolist())
    written = 0
    for i, at in enumerate(arrivals):
        if i in refused:
            rec = RequestRecord(
                request_id=f"o{i}",
                model="tiny",
                status=RequestStatus.REJECTED,
                isl_tokens=101,
                osl_tokens=0,
                queue_ms=5.0,
                e2e_ms=5.0,
                arrived_at_s=float(at),
                http_status=503,
            )
        else:
            ttft, itl = float(rng.uniform(1800, 3000)), float(rng.uniform(150, 190))
            rec = RequestRecord(
                request_id=f"o{i}",
                model="tiny",
                status=RequestStatus.OK,
                finish_reason="length",
                isl_tokens=101,
                osl_tokens=200,
                queue_ms=1500.0,
                ttft_ms=ttft,
                itl_ms=itl,
                e2e_ms=ttft + 199 * itl,
                arrived_at_s=float(at),
                http_status=200,
            )
        if rec.finished_at_s < now:  # the frontend writes a record when its request ends
            writer.record(rec)
            written += 1
    assert await writer.flush() == written
    registry = WorkerRegistry(redis, keys, ttl_s=60.0)
    for gid, role, depth, free in (("prefill-0", R.PREFILL, 2, 900), ("decode-0", R.DECODE, 48, 10)):
        await registry.publish(
            WorkerGroup(
                group_id=gid,
                role=role,
                address="127.0.0.1:1",
                model="tiny",
                ep_size=2,
                block_size_tokens=16,
                kv_blocks_total=1000,
                kv_blocks_free=free,
                max_blocks_per_rank=free // 2,
                queue_depth=depth,
                heartbeat_at_s=now,
                state=GroupState.LIVE,
            )
        )

    async with started(kube_crds, redis_server) as (svc, _):
        await wait_for(lambda: ("default", "overload") in svc.deployments)
        result = await svc.deployments[("default", "overload")].tick(now)
        assert result is not None
        decision = result.decision
        text = "; ".join(str(r) for r in decision.reasons)
        assert decision.forecast.osl_tokens == pytest.approx(200.0), text
        assert result.stats.load.rejected_fraction > 0.2
        assert decision.decode.current_groups == 1 and decision.decode.desired_groups == 2, text
        assert "refused" in text
        assert pool_replicas(kube_crds, "overload", Role.DECODE) == 2
    await redis.aclose()


async def test_layout_recommendation_in_status_and_applied_when_asked(
    kube_crds: EmulatedCluster, redis_server: Any
) -> None:
    name = "layout-r1"
    obj = r1_manifest(name)
    obj["spec"]["planner"]["layoutChanges"] = "apply"
    obj["spec"]["planner"].pop("gpuBudgetNodes", None)
    for pool in ("prefill", "decode"):
        obj["spec"][pool]["maxReplicas"] = 64
    install(kube_crds, obj)
    keys = DeploymentKeys("default", name)
    redis = aioredis.from_url(redis_server.url)
    await redis.delete(keys.request_metrics(), keys.planner_decisions())
    await write_requests(redis, keys, 60.0, 6 * INTERVAL_S, 2048)
    async with started(kube_crds, redis_server) as (svc, _):
        await wait_for(lambda: ("default", name) in svc.deployments)
        planner = svc.deployments[("default", name)]
        first = await planner.tick()
        assert first is not None and planner.recommendation is not None
        dep = kube_crds.get("moeplane.io/v1alpha1", "MoEDeployment", name, "default")
        assert dep is not None and dep["status"]["lastDecision"]["layoutRecommendation"]
        assert dep["spec"]["decode"]["expertParallel"] == 144  # not before it held for 3 ticks
        for i in range(1, 6):  # the same layout must hold for three ticks in a row, pools settled
            for role in Role:  # the operator reports the groups asked for as ready
                pool = f"{name}-{role.value}"
                kube_crds.kubectl(
                    "patch",
                    "moepool",
                    pool,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    json.dumps({"status": {"readyGroups": pool_replicas(kube_crds, name, role)}}),
                )
            await planner.tick(planner.clock() + i * 0.01)
            dep = kube_crds.get("moeplane.io/v1alpha1", "MoEDeployment", name, "default")
            assert dep is not None
            if "moeplane.io/last-layout-change" in (dep["metadata"].get("annotations") or {}):
                break
            assert dep["spec"]["decode"]["expertParallel"] == 144
        audit = json.loads(dep["metadata"]["annotations"]["moeplane.io/last-layout-change"])
        changed = audit["patch"]
        assert changed and all(
            dep["spec"][pool]["expertParallel"] == p["expertParallel"] for pool, p in changed.items()
        )
        events = [json.loads(f[b"json"])["kind"] for _, f in await redis.xrange(keys.planner_decisions())]
        assert "layout_change" in events
    await redis.aclose()
