"""The dashboard in real Chromium (Playwright), populated with real data: ten minutes of requests
written to the Redis stream by the frontend's own writer (ok, 4xx, 503 and cancelled), EP groups
registered by the registry in every state, EPLB load published by the workers' store, and the
planner ticking over them. Checks each panel an SRE needs, then what-if and Apply.

Screenshots at two window sizes go to the test's tmp dir, and to $MOEPLANE_SCREENSHOT_DIR when
set (to look at them)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from moeplane.api.enums import Role
from moeplane.planner.service.app import PlannerService

from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.registry import GroupState, WorkerGroup, WorkerRegistry
from moeplane.bus.request_metrics import RequestMetricsWriter, RequestRecord, RequestStatus
from tests.kube.cluster import EmulatedCluster
from tests.planner.service_harness import INTERVAL_S, TOKEN, install, r1_manifest, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PANELS = ("outcomes", "rate", "tokens", "ttft", "itl", "e2e", "groups", "pools", "balance", "heatmap")
LAYERS, EXPERTS = 4, 16
SPAN_S = 600.0


def publish_expert_load(url: str, keys: DeploymentKeys) -> None:
    """What a decode group's ranks and its balancer write: one load window and a balancedness."""
    import redis as sync_redis
    import torch
    from moeplane.workers.eplb.counter import LoadWindow
    from moeplane.workers.eplb.store import EplbStore
    from moeplane.workers.placement import Placement

    client = sync_redis.Redis.from_url(url)
    store = EplbStore(client, keys, Role.DECODE)
    counts = torch.arange(LAYERS * EXPERTS, dtype=torch.int64).reshape(LAYERS, EXPERTS)
    store.publish_placement(Placement.identity(LAYERS, EXPERTS).with_version(3))
    store.publish_window("decode-0", LoadWindow(0, 3, 10, counts, 10, counts.clone()))
    store.publish_status(0.82, 3)
    client.close()


async def write_traffic(redis: Any, keys: DeploymentKeys, now: float) -> int:
    """Ten minutes of requests, rising, with every outcome, through the frontend's writer."""
    rng = np.random.default_rng(7)
    writer = RequestMetricsWriter(redis, keys)
    t, n = now - SPAN_S, 0
    while t < now - 3.0:
        t += float(rng.exponential(1 / (10 + 20 * (t - now + SPAN_S) / SPAN_S)))
        u = rng.random()
        if u < 0.08:
            status, code, osl, ttft = RequestStatus.REJECTED, 503, 0, None
        elif u < 0.11:
            status, code, osl, ttft = RequestStatus.REJECTED, 400, 0, None
        elif u < 0.14:
            status, code, osl, ttft = RequestStatus.CANCELLED, 200, 12, float(rng.uniform(400, 900))
        else:
            status, code, osl, ttft = (
                RequestStatus.OK,
                200,
                int(rng.integers(200, 1200)),
                float(rng.uniform(300, 1500)),
            )
        itl = float(rng.uniform(20, 45)) if ttft is not None else None
        e2e = (ttft or 5.0) + (osl * itl if itl else 0.0)
        if t + e2e / 1e3 > now:
            continue  # still running: its record comes when it ends
        writer.record(
            RequestRecord(
                request_id=f"d{n}",
                model="deepseek-r1",
                status=status,
                isl_tokens=int(rng.integers(500, 6000)),
                osl_tokens=osl,
                queue_ms=float(rng.uniform(0, 200)),
                ttft_ms=ttft,
                itl_ms=itl,
                e2e_ms=e2e,
                arrived_at_s=t,
                http_status=code,
            )
        )
        n += 1
    await writer.flush()
    return n


async def register_groups(redis: Any, keys: DeploymentKeys, now: float) -> None:
    registry = WorkerRegistry(redis, keys, ttl_s=600.0)
    groups = [
        ("prefill-0", Role.PREFILL, GroupState.LIVE, 0, ""),
        ("prefill-1", Role.PREFILL, GroupState.DRAINING, 0, ""),
        ("decode-0", Role.DECODE, GroupState.LIVE, 0, ""),
        ("decode-1", Role.DECODE, GroupState.RESTARTING, 2, "rank 3 stopped answering"),
        ("decode-2", Role.DECODE, GroupState.FAILED, 5, "gave up after 5 restarts"),
    ]
    for gid, role, state, restarts, message in groups:
        await registry.publish(
            WorkerGroup(
                group_id=gid,
                role=role,
                address="10.0.0.1:50051",
                model="deepseek-r1",
                ep_size=32,
                block_size_tokens=64,
                kv_blocks_total=10_000,
                kv_blocks_free=4_000,
                max_blocks_per_rank=100,
                queue_depth=12,
                heartbeat_at_s=now,
                state=state,
                restarts=restarts,
                message=message,
            )
        )


@pytest.mark.skipif(not Path(CHROMIUM).exists() and shutil.which("chromium") is None, reason="no chromium")
async def test_dashboard_in_chromium(
    service: tuple[PlannerService, TestClient], kube_crds: EmulatedCluster, redis_server: Any, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    svc, client = service
    name = "web-r1"
    install(kube_crds, r1_manifest(name))
    keys = DeploymentKeys("default", name)
    redis = aioredis.from_url(redis_server.url)
    await redis.delete(keys.request_metrics(), keys.planner_decisions(), keys.workers())
    now = time.time()
    assert await write_traffic(redis, keys, now) > 1000
    await register_groups(redis, keys, now)
    publish_expert_load(redis_server.url, keys)
    await wait_for(lambda: ("default", name) in svc.deployments)
    planner = svc.deployments[("default", name)]
    for i in range(int(SPAN_S // INTERVAL_S) - 1, -1, -1):  # the planner's ticks over the ten minutes
        await planner.tick(now - i * INTERVAL_S)
    base = str(client.make_url("/")).rstrip("/")
    shots = [tmp_path]
    if os.environ.get("MOEPLANE_SCREENSHOT_DIR"):
        shots.append(Path(os.environ["MOEPLANE_SCREENSHOT_DIR"]))
        shots[-1].mkdir(parents=True, exist_ok=True)

    async def screenshot(page: Any, file: str) -> None:
        for folder in shots:
            await page.screenshot(path=str(folder / file), full_page=True)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1000})
            # Offline: any request off the planner's origin would be a CDN dependency.
            foreign: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(base) else foreign.append(r.url))
            await page.goto(f"{base}/dashboard")
            await page.wait_for_function("Number(document.body.dataset.rendered || 0) > 0", timeout=30_000)
            await page.wait_for_function(
                f"(document.body.dataset.populated || '').split(',').length >= {len(PANELS)}", timeout=30_000
            )
            populated = (await page.evaluate("document.body.dataset.populated")).split(",")
            assert set(populated) == set(PANELS)
            # Request outcomes as rates, every kind present.
            outcomes = await page.evaluate(
                "Object.fromEntries(document.getElementById('outcomes').data"
                ".map(t => [t.name, Math.max(...t.y)]))"
            )
            for kind in ("ok", "4xx", "503", "cancelled"):
                assert outcomes[kind] > 0, (kind, outcomes)
            # Latency: e2e p50/p90/p99 beside TTFT and ITL.
            e2e = await page.evaluate("document.getElementById('e2e').data.map(t => t.name)")
            assert e2e == ["p50", "p90", "p99"]
            # Running/waiting and KV per pool.
            pools = await page.evaluate("document.getElementById('pools').data.map(t => t.name)")
            assert {"prefill running", "decode waiting", "decode KV in use %"} <= set(pools)
            # Groups and GPUs: distinct colours, on separate axes that do not overlap.
            groups = await page.evaluate(
                "(() => { const g = document.getElementById('groups');"
                " return {colors: g.data.map(t => t.line.color), axes: g.data.map(t => t.yaxis || 'y'),"
                " top: g.layout.yaxis.domain, bottom: g.layout.yaxis2.domain}; })()"
            )
            assert len(set(groups["colors"])) == 3 and groups["axes"] == ["y", "y", "y2"]
            assert groups["bottom"][1] < groups["top"][0]
            # Titles above the plots, where the toolbar (inside the plot) cannot cover them.
            for panel in PANELS:
                title = await page.locator(f"#{panel}").evaluate(
                    "el => [el.previousElementSibling.getBoundingClientRect().bottom,"
                    " el.getBoundingClientRect().top]"
                )
                assert title[0] <= title[1] + 0.5, panel
            # The time axis starts where the data does, in UTC, and says so.
            start = await page.evaluate("document.getElementById('ttft').layout.xaxis.range[0]")
            series = await (
                await client.get(f"/api/deployments/default/{name}/series?windowSeconds=3600")
            ).json()
            first = time.strftime("%Y-%m-%d %H:%M", time.gmtime(series["dataStartSeconds"]))
            assert start.startswith(first[:15]), (start, first)
            assert "UTC" in await page.inner_text("header")
            # Per-group health, with the placement version and balancedness.
            rows = await page.locator("#group-table tbody tr").all_inner_texts()
            states = {r.split("\t")[2] for r in rows}
            assert states == {"live", "draining", "restarting", "failed"}
            assert all("v3" in r and "0.820" in r for r in rows if "\tdecode\t" in r)
            # The heatmap over the chosen span, from the samples the planner kept.
            heat = await page.evaluate("document.getElementById('heatmap').data[0].z")
            assert len(heat) == LAYERS and len(heat[0]) == EXPERTS and heat[3][15] == LAYERS * EXPERTS - 1
            assert "mean over the last 60 min" in await page.inner_text("#heattitle")
            await page.select_option("#heatspan", "300")
            await page.wait_for_function(
                "document.getElementById('heattitle').textContent.includes('last 5 min')"
            )
            # Runs of holds collapse into one line each; changes stand alone.
            assert await page.locator("#decisions li.decision-hold").count() >= 1
            hold = await page.locator("#decisions li.decision-hold summary").first.inner_text()
            assert "× hold" in hold and "UTC" in hold
            assert await page.locator("#decisions li").count() < int(SPAN_S // INTERVAL_S)
            # The layout recommendation, with what it would save.
            assert "GPU" in await page.inner_text("#advice")
            await screenshot(page, "dashboard-wide.png")
            assert not foreign, foreign

            await page.set_viewport_size({"width": 900, "height": 1000})
            await page.wait_for_timeout(500)  # a re-layout, not a wait for data
            await screenshot(page, "dashboard-narrow.png")

            await page.fill("input[name=ttftMs]", "800")
            await page.click("#whatif")
            await page.wait_for_function(
                "document.querySelector('#whatif-table tr.whatif-proposed') || "
                "document.getElementById('tuning-result').className === 'error'",
                timeout=120_000,
            )
            assert await page.locator("#whatif-table tr.whatif-proposed").count(), await page.inner_text(
                "#tuning-result"
            )
            cells = await page.locator("#whatif-table tr.whatif-proposed td").all_inner_texts()
            assert cells[0] == "proposed" and float(cells[1]) >= 1 and cells[5].endswith("%")

            await page.fill("input[name=itlMs]", "45")
            await page.click("#apply")
            await page.wait_for_selector("#tuning-result.error", timeout=10_000)
            assert "401" in await page.inner_text("#tuning-result")
            dep = kube_crds.get("moeplane.io/v1alpha1", "MoEDeployment", name, "default")
            assert dep is not None and dep["spec"]["sla"]["itlMs"] == 50

            await page.fill("input[name=token]", TOKEN)
            await page.click("#apply")
            await page.wait_for_selector("#tuning-result.ok", timeout=10_000)
            await screenshot(page, "applied.png")
        finally:
            await browser.close()
    await redis.aclose()
    dep = kube_crds.get("moeplane.io/v1alpha1", "MoEDeployment", name, "default")
    assert dep is not None
    assert dep["spec"]["sla"]["itlMs"] == 45 and dep["spec"]["sla"]["ttftMs"] == 800
    # Only what was edited is patched (and audited).
    audit = json.loads(dep["metadata"]["annotations"]["moeplane.io/last-sla-change"])
    assert audit["patch"] == {"sla": {"ttftMs": 800, "itlMs": 45}}
    assert (tmp_path / "dashboard-wide.png").stat().st_size > 50_000
