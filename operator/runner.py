"""Running the operator: kopf's event loop with moeplane's registry, settings and liveness."""

from __future__ import annotations

import asyncio
import logging

import kopf
from moeplane.operator.config import OperatorConfig
from moeplane.operator.handlers import OperatorState, build_registry, make_settings


async def run_operator(
    config: OperatorConfig,
    *,
    state: OperatorState | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run until `stop_flag` is set (or SIGINT/SIGTERM in the main thread)."""
    state = state or OperatorState(config)
    await kopf.operator(
        registry=build_registry(config, state),
        settings=make_settings(config),
        standalone=config.standalone,
        peering_name=None if config.standalone else config.peering_name,
        clusterwide=config.clusterwide,
        namespaces=list(config.namespaces),
        liveness_endpoint=config.liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        memo=kopf.Memo(state=state),
    )


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kopf's per-object INFO lines ("Handler succeeded") are noise at 100 deployments.
    logging.getLogger("kopf").setLevel(logging.DEBUG if verbose else logging.WARNING)
