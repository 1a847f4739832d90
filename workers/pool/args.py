"""The flags of `moeplane pool` (argparse only: `moeplane --help` must not import torch or Ray)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine-config", default=None, help="engine.json (default: $MOEPLANE_ENGINE_CONFIG)")
    p.add_argument("--redis-url", default=None, help="Redis URL (default: $MOEPLANE_REDIS_URL)")
    p.add_argument("--role", choices=["prefill", "decode"], default=None, help="default: $MOEPLANE_ROLE")
    p.add_argument("--pool", default=None, help="pool name (default: $MOEPLANE_POOL)")
    p.add_argument("--ray-address", default="auto",
                   help="Ray cluster to join (default: auto, the head this pod runs)")
    p.add_argument("--ray-connect-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for the Ray head to come up, retrying with backoff (default 120)")
    p.add_argument("--eplb-load-file", default=None,
                   help="static EPLB load file (.json/.pt; default: $MOEPLANE_EPLB_LOAD_FILE, else "
                   "spec.eplb.loadFile)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address of the groups' control services (0.0.0.0 in a pod)")
    p.add_argument("--rank-host", default=None,
                   help="address the ranks' KV services bind (default: --host)")
    p.add_argument("--advertise-host", default=None,
                   help="host registered for the groups (default: $MOEPLANE_POD_IP, else the node IP)")
    p.add_argument("--groups", type=int, default=None,
                   help="EP groups to run (default: as many as the Ray cluster's accelerators hold)")
    p.add_argument("--cpus-per-rank", type=float, default=1.0, help="Ray CPUs per rank of a CPU pool")
    p.add_argument("--max-kv-blocks", type=int, default=None, help="cap on KV blocks per rank")
    p.add_argument("--reconcile-interval", type=float, default=5.0, help="seconds between checks")
    p.add_argument("--ready-file", default=None,
                   help="a file present while every group the pool should run is up (readiness probe)")
