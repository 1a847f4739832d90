"""What the dashboard shows, as JSON built from observations (request stream, decisions stream,
worker registry, EPLB hash), plus the page and plotly.js from the installed plotly package
(works offline). Times are Unix seconds; the page shows them in UTC and says so.
"""

from __future__ import annotations

import math
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web
from moeplane.api.enums import Role
from moeplane.planner.observe import WindowBy, window_stats
from moeplane.planner.service.deployment import DeploymentPlanner

from moeplane.bus.eplb import read_logical_load, read_status
from moeplane.bus.keys import DeploymentKeys
from moeplane.bus.registry import WorkerGroup
from moeplane.bus.request_metrics import RequestRecord

MAX_BUCKETS = 120
MIN_BUCKET_S = 10.0


def summary(p: DeploymentPlanner) -> dict[str, Any]:
    spec = p.deployment.spec
    last = p.last
    pools: dict[str, Any] = {}
    if p.last_pools is not None:
        for role, groups in zip((Role.PREFILL, Role.DECODE), p.last_pools, strict=True):
            pools[role.value] = {
                "replicas": groups.desired,
                "readyGroups": groups.ready,
                "rolling": groups.rolling,
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
        "pools": pools,
        "gpusPerGroup": {role.value: p.models.gpus_per_group(role) for role in Role},
        "lastDecision": None if last is None else {**last.decision.to_dict(), "applied": last.applied},
        "recommendation": p.recommendation.to_dict() if p.recommendation is not None else None,
    }


def groups_view(workers: list[WorkerGroup], eplb: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per registered EP group: its health, load and its pool's placement."""
    rows = []
    for w in sorted(workers, key=lambda g: (g.role.value, g.group_id)):
        pool = eplb.get(w.role.value) or {}
        used = w.kv_blocks_total - w.kv_blocks_free
        rows.append(
            {
                "groupId": w.group_id,
                "role": w.role.value,
                "state": w.state.value,
                "restarts": w.restarts,
                "message": w.message,
                "requests": w.queue_depth,
                "kvUsage": round(used / w.kv_blocks_total, 4) if w.kv_blocks_total else None,
                "placementVersion": pool.get("placementVersion"),
                "balancedness": pool.get("balancedness"),
                "heartbeatAtSeconds": w.heartbeat_at_s,
            }
        )
    return rows


def series(
    p: DeploymentPlanner,
    records: list[RequestRecord],
    events: list[dict[str, Any]],
    eplb: dict[str, Any],
    workers: list[WorkerGroup],
    now_s: float,
    window_s: float,
    heatmap_s: float | None = None,
) -> dict[str, Any]:
    """Per-bucket traffic and latency (requests by end time) from where the data starts (at most
    `window_s` back), the
    planner's decisions and SLA changes, the groups' health, and the pools' EPLB state with the
    expert load over `heatmap_s` (default: the window)."""
    interval = max(MIN_BUCKET_S, window_s / MAX_BUCKETS)
    starts = [r.finished_at_s for r in records] + [e.get("atSeconds", now_s) for e in events]
    first = max(now_s - window_s, min(starts, default=now_s))
    n = max(1, math.ceil((now_s - first) / interval))
    start = now_s - n * interval
    # By end time: a bucket holds the requests that ended in it, so the latest buckets are
    # complete (by arrival, the requests still running would be missing from them).
    buckets = [
        window_stats(
            records,
            start + i * interval,
            start + (i + 1) * interval,
            p.config.sla.percentile,
            by=WindowBy.FINISH,
        ).to_dict()
        for i in range(n)
    ]
    decisions = [e for e in events if e.get("kind") == "decision" and e.get("atSeconds", 0) >= start]
    changes = [e for e in events if e.get("kind") == "sla_change"]
    span = heatmap_s or window_s
    for role in Role:
        pool = eplb.get(role.value)
        if pool is not None:
            pool["history"] = p.expert_load.view(role, span, now_s)
    return {
        **summary(p),
        "nowSeconds": now_s,
        "dataStartSeconds": first if starts else None,
        "bucketSeconds": interval,
        "buckets": buckets,
        "decisions": decisions,
        "slaChanges": changes[-20:],
        "groups": groups_view(workers, eplb),
        "eplb": eplb,
    }


def eplb_view(client: Any, keys: DeploymentKeys) -> dict[str, Any]:
    """Each pool's placement version, balancedness and current [layers, experts] load (sync Redis)."""
    out: dict[str, Any] = {}
    for role in Role:
        status = read_status(client, keys, role)
        load = read_logical_load(client, keys, role)
        out[role.value] = {
            "placementVersion": status.placement_version,
            "balancedness": status.balancedness,
            "balancednessAtSeconds": status.balancedness_at_s,
            "load": None if load is None else load.tolist(),
            "_matrix": load,
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
