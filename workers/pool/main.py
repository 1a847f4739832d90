"""`moeplane pool`: what a pool's Ray head runs to serve its EP groups (see `runner.PoolRunner`).

It reads its settings from the operator's environment (`settings` lists the variables; flags
override them), joins the pod's Ray cluster (`--ray-address`, default the local head), waiting up to
`--ray-connect-timeout` for a head that is still starting, and runs until SIGTERM or SIGINT, then
deregisters and stops every group. Bad settings or no head by the deadline: exit status 1 and
one line saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from moeplane.api import podcontract
from moeplane.workers.pool.connect import Backoff, ConnectTimeout, connect_with_backoff, ray_connector
from moeplane.workers.pool.plan import PoolOptions, PoolPlanError
from moeplane.workers.pool.runner import PoolRunner
from moeplane.workers.pool.settings import PoolSettings, PoolSetupError, load_pool_settings

# Flags that override an environment variable of the same meaning.
_ENV_FLAGS = {
    "engine_config": podcontract.ENGINE_CONFIG_ENV,
    "redis_url": podcontract.REDIS_URL_ENV,
    "role": podcontract.ROLE_ENV,
    "pool": podcontract.POOL_ENV,
    "advertise_host": podcontract.POD_IP_ENV,
    "eplb_load_file": podcontract.EPLB_LOAD_FILE_ENV,
}


def settings_from(args: argparse.Namespace, env: dict[str, str]) -> PoolSettings:
    merged = dict(env)
    for attr, var in _ENV_FLAGS.items():
        value = getattr(args, attr, None)
        if value:
            merged[var] = value
    return load_pool_settings(merged)


def options_from(args: argparse.Namespace) -> PoolOptions:
    return PoolOptions(
        host=args.host,
        rank_host=args.rank_host or args.host,
        groups=args.groups,
        cpus_per_rank=args.cpus_per_rank,
        max_kv_blocks_per_rank=args.max_kv_blocks,
        reconcile_s=args.reconcile_interval,
        ready_file=args.ready_file,
    )


def _say(message: str) -> None:
    print(f"moeplane pool: {message}", flush=True)


async def serve(settings: PoolSettings, options: PoolOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await PoolRunner(settings, options, _say).start()
    print(f"moeplane pool: {settings.role} pool {settings.pool_name!r} of {settings.keys.prefix}, "
          f"EP{settings.ep_size} groups on {settings.device}", flush=True)
    await runner.run(stop)
    print("moeplane pool: stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if not args.ray_connect_timeout > 0:
            raise PoolSetupError(f"--ray-connect-timeout must be > 0 seconds, got {args.ray_connect_timeout}")
        settings = settings_from(args, dict(os.environ))
        options = options_from(args)
    except (PoolSetupError, PoolPlanError) as exc:
        print(f"moeplane pool: {exc}", file=sys.stderr)
        return 1
    # The sidecar can start before the pod's Ray head: wait for it, within the deadline.
    head = f"the Ray head at {args.ray_address}"
    try:
        connect_with_backoff(ray_connector(args.ray_address), head, Backoff(args.ray_connect_timeout), _say)
    except ConnectTimeout as exc:
        print(f"moeplane pool: {exc}", file=sys.stderr)
        return 1
    import ray

    try:
        asyncio.run(serve(settings, options))
    finally:
        ray.shutdown()
    return 0
