"""What the dashboard shows, as JSON built from observations (request stream, decisions stream,
EPLB hash), plus the page and plotly.js from the installed plotly package (works offline)."""

from __future__ import annotations

import math
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web
from moeplane.api.enums import Role
from moeplane.operator.names import pool_name
from moeplane.planner.observe import window_stats
from moeplane.planner.service.deployment import DeploymentPlanner

from moeplane.bus.eplb import read_logical_load, read_status
from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.request_metrics import RequestRecord

MAX_BUCKETS = 120


def summary(
    p: DeploymentPlanner, pools: dict[tuple[str, str], dict[str, Any]] | None = None
) -> dict[str, Any]:
    spec = p.deployment.spec
    last = p.last
    seen = {}
    for role in Role:
        pool = (pools or {}).get((p.namespace, pool_name(p.name, role)))
        if pool is not None:
            status = pool.get("status") or {}
            seen[role.value] = {
                "replicas": (pool.get("spec") or {}).get("replicas"),
                "readyReplicas": status.get("readyReplicas", 0),
            }
    return {
        "namespace": p.namespace,
        "name": p.name,
        "model": spec.model.served_model_name or spec.model.preset,
        "sla": {"ttftMs": spec.sla.ttft_ms, "itlMs": spec.sla.itl_ms, "percentile": spec.sla.percentile},
        "planner": {
            "intervalSeconds": spec.planner.interval_seconds,
            "predictor": spec.planner.predictor.value,
            "gpuBudgetNodes": spec.planner.gpu_budget_nodes,
        },
        "bounds": {
            role.value: {
                "minReplicas": spec.pool(role).min_replicas,
                "maxReplicas": spec.pool(role).max_replicas,
            }
            for role in Role
        },
        "pools": seen,
        "gpusPerGroup": {role.value: p.models.gpus_per_group(role) for role in Role},
        "lastDecision": None if last is None else {**last.decision.to_dict(), "applied": last.applied},
    }


def series(
    p: DeploymentPlanner,
    records: list[RequestRecord],
    events: list[dict[str, Any]],
    eplb: dict[str, Any],
    now_s: float,
    window_s: float,
    pools: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Per-interval latency and load over the window, the planner's decisions and SLA changes,
    and the pools' EPLB state."""
    interval = max(p.config.interval_s, window_s / MAX_BUCKETS)
    n = max(1, math.ceil(window_s / interval))
    start = now_s - n * interval
    buckets = [
        window_stats(
            records, start + i * interval, start + (i + 1) * interval, p.config.sla.percentile
        ).to_dict()
        for i in range(n)
    ]
    decisions = [e for e in events if e.get("kind") == "decision" and e.get("atSeconds", 0) >= start]
    changes = [e for e in events if e.get("kind") == "sla_change"]
    return {
        **summary(p, pools),
        "bucketSeconds": interval,
        "buckets": buckets,
        "decisions": decisions,
        "slaChanges": changes[-20:],
        "eplb": eplb,
    }


def eplb_view(client: Any, keys: DeploymentKeys) -> dict[str, Any]:
    """Each pool's placement version, balancedness and [layers, experts] load (sync Redis)."""
    out: dict[str, Any] = {}
    for role in Role:
        status = read_status(client, keys, role)
        load = read_logical_load(client, keys, role)
        out[role.value] = {
            "placementVersion": status.placement_version,
            "balancedness": status.balancedness,
            "balancednessAtSeconds": status.balancedness_at_s,
            "load": None if load is None else load.tolist(),
        }
    return out


@cache
def _plotly_js() -> bytes:
    return resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()


async def plotly_js(_: web.Request) -> web.Response:
    return web.Response(
        body=_plotly_js(), content_type="application/javascript", headers={"Cache-Control": "max-age=86400"}
    )


@cache
def _page() -> str:
    return resources.files("moeplane.planner.service").joinpath("dashboard.html").read_text()


async def dashboard(_: web.Request) -> web.Response:
    return web.Response(text=_page(), content_type="text/html")
