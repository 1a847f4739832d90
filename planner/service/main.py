"""`moeplane planner`: run the service until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os

from aiohttp import web
from moeplane.planner.service.app import PlannerService, ServiceConfig

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServiceConfig(
        redis_url=args.redis_url or os.environ.get("MOEPLANE_REDIS_URL", DEFAULT_REDIS_URL),
        namespaces=list(args.namespace or []),
        dashboard_token=os.environ.get("MOEPLANE_DASHBOARD_TOKEN") or None,
        kubeconfig=args.kubeconfig,
    )
    if config.dashboard_token is None:
        logging.getLogger(__name__).warning(
            "MOEPLANE_DASHBOARD_TOKEN is not set: the dashboard's Apply is refused"
        )
    service = PlannerService(config)
    web.run_app(service.app(), host=args.host, port=args.port, print=None)
    return 0
