"""The dashboard in real Chromium (Playwright): the page loads offline (plotly.js from the plotly
package), charts render with data, an edited SLA shows what-if numbers, Apply without the token is
refused and with it changes the MoEDeployment in the emulated API server. Screenshots go to the
test's tmp dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from moeplane.planner.service.app import PlannerService

from moeplane.bus.keys import DeploymentKeys
from tests.kube.cluster import EmulatedCluster
from tests.planner.service_harness import TOKEN, install, r1_manifest, wait_for, write_requests

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


def publish_expert_load(url: str, keys: DeploymentKeys) -> None:
    """What a decode group's ranks and its balancer write: one load window and a balancedness."""
    import redis as sync_redis
    import torch
    from moeplane.api.enums import Role
    from moeplane.workers.eplb.counter import LoadWindow
    from moeplane.workers.eplb.store import EplbStore

    client = sync_redis.Redis.from_url(url)
    store = EplbStore(client, keys, Role.DECODE)
    counts = torch.arange(LAYERS * EXPERTS, dtype=torch.int64).reshape(LAYERS, EXPERTS)
    store.publish_window("decode-0", LoadWindow(0, 1, 10, counts, 10, counts.clone()))
    store.publish_status(0.82, 1)
    client.close()


LAYERS, EXPERTS = 4, 16


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
    await redis.delete(keys.request_metrics(), keys.planner_decisions())
    await write_requests(redis, keys, 20.0, 60.0, 4096)
    await redis.aclose()
    publish_expert_load(redis_server.url, keys)
    await wait_for(lambda: ("default", name) in svc.deployments)
    await svc.deployments[("default", name)].tick()
    base = str(client.make_url("/")).rstrip("/")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1800})
            # Offline: any request off the planner's origin would be a CDN dependency.
            foreign: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(base) else foreign.append(r.url))
            await page.goto(f"{base}/dashboard")
            await page.wait_for_function("Number(document.body.dataset.rendered || 0) > 0", timeout=20_000)
            for chart in ("ttft", "itl", "rate", "groups", "balance", "heatmap"):
                assert await page.locator(f"#{chart} .main-svg").count() > 0, chart
            # The TTFT chart has data points (markers), not only axes.
            assert await page.locator("#ttft .scatterlayer .point").count() > 0
            assert await page.locator("#decisions li").count() >= 1
            heat = await page.evaluate("document.getElementById('heatmap').data[0].z")
            assert len(heat) == LAYERS and len(heat[0]) == EXPERTS and heat[3][15] == LAYERS * EXPERTS - 1
            bars = await page.evaluate("document.getElementById('balance').data[0].y")
            assert bars[1] == pytest.approx(0.82)
            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert not foreign, foreign

            await page.fill("input[name=ttftMs]", "800")
            await page.click("#whatif")
            await page.wait_for_selector("#whatif-table tr.whatif-proposed", timeout=60_000)
            cells = await page.locator("#whatif-table tr.whatif-proposed td").all_inner_texts()
            assert cells[0] == "proposed" and float(cells[1]) >= 1 and cells[5].endswith("%")
            await page.screenshot(path=str(tmp_path / "whatif.png"), full_page=True)

            await page.fill("input[name=itlMs]", "45")
            await page.click("#apply")
            await page.wait_for_selector("#tuning-result.error", timeout=10_000)
            assert "401" in await page.inner_text("#tuning-result")
            dep = kube_crds.get("moeplane.io/v1alpha1", "MoEDeployment", name, "default")
            assert dep is not None and dep["spec"]["sla"]["itlMs"] == 50

            await page.fill("input[name=token]", TOKEN)
            await page.click("#apply")
            await page.wait_for_selector("#tuning-result.ok", timeout=10_000)
            await page.screenshot(path=str(tmp_path / "applied.png"), full_page=True)
        finally:
            await browser.close()
    dep = kube_crds.get("moeplane.io/v1alpha1", "MoEDeployment", name, "default")
    assert dep is not None
    assert dep["spec"]["sla"]["itlMs"] == 45 and dep["spec"]["sla"]["ttftMs"] == 800
    # Only what was edited is patched (and audited).
    audit = json.loads(dep["metadata"]["annotations"]["moeplane.io/last-sla-change"])
    assert audit["patch"] == {"sla": {"ttftMs": 800, "itlMs": 45}}
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
