"""The planner and its dashboard next to the embedded stack (`moeplane up`, `moeplane demo --planner`).

The planner service runs in the stack's event loop over the embedded adapters
(`moeplane.planner.embedded`): it observes the stack's Redis, scales the stack's pools and serves
/dashboard, /api/… and /metrics on its own port. The dashboard token comes from
MOEPLANE_DASHBOARD_TOKEN or is made up here (the caller prints it once); Apply changes the
in-memory spec, since there is no CR in embedded mode.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web
    from moeplane.planner.embedded import EmbeddedDeployments, EmbeddedPools
    from moeplane.planner.service.app import PlannerService
    from moeplane.workers.embedded.stack import EmbeddedStack

TOKEN_ENV = "MOEPLANE_DASHBOARD_TOKEN"


def dashboard_token() -> tuple[str, bool]:
    """(token, generated): MOEPLANE_DASHBOARD_TOKEN if set, else a fresh random one."""
    given = os.environ.get(TOKEN_ENV)
    if given:
        return given, False
    return secrets.token_urlsafe(18), True


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest as the planner sees it: the one `moeplane up` plans from (`plan.read_manifest`:
    relative checkpoint directories made absolute)."""
    from moeplane.workers.embedded.plan import read_manifest as read

    return read(path)


@dataclass
class EmbeddedPlanner:
    service: PlannerService
    source: EmbeddedDeployments
    pools: EmbeddedPools
    runner: web.AppRunner
    url: str
    token: str

    async def stop(self) -> None:
        await self.runner.cleanup()  # the app's cleanup stops the service and its loops


async def start_planner(
    stack: EmbeddedStack, manifest: dict[str, Any], host: str, port: int, token: str, *, tick: bool = True
) -> EmbeddedPlanner:
    """Serve the planner for the stack's deployment on host:port (0: any free port)."""
    import asyncio

    from aiohttp import web
    from moeplane.planner.embedded import embedded_adapters
    from moeplane.planner.service.app import PlannerService, ServiceConfig

    source, pools = embedded_adapters(stack, manifest)
    config = ServiceConfig(
        redis_url=stack.redis_url, namespaces=[source.namespace], dashboard_token=token, tick=tick
    )
    service = PlannerService(config, source, pools)
    runner = web.AppRunner(service.app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        await asyncio.wait_for(service.synced.wait(), 30.0)
    except BaseException:
        await runner.cleanup()
        raise
    return EmbeddedPlanner(service, source, pools, runner, f"http://{host}:{bound}", token)
