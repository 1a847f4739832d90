"""Subcommands of the `moeplane` CLI owned by moeplane.workers: `up`, `demo`, `frontend`, `pool`
and `eplb-plan`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    up = subparsers.add_parser(
        "up", help="run the whole stack on this machine (local Ray, private Redis, tiny CPU MoE)",
        description="Start a private redis-server, local Ray, one prefill and one decode group (EP2 "
        "each with the tiny model) and the OpenAI-compatible frontend, all on 127.0.0.1. Ctrl-C stops "
        "everything.",
    )
    add_stack_arguments(up, default_port=8000)
    up.add_argument("--no-planner", action="store_true", help="do not run the planner and dashboard")
    up.add_argument("--api-key", default=None,
                    help="require this key as 'Authorization: Bearer KEY' on the OpenAI API "
                    "(default: $MOEPLANE_API_KEY; unset: no key)")
    up.set_defaults(func=_up)

    demo = subparsers.add_parser(
        "demo", help="start the embedded stack, drive a Poisson load and print an SLA report",
        description="Start the same stack as `up`, send a bounded Poisson load with mixed prompt "
        "lengths, then print TTFT and ITL p50/p90/p99 against the manifest's SLA, tokens/s and errors.",
    )
    add_stack_arguments(demo, default_port=0)
    demo.add_argument("--requests", type=int, default=48, help="requests to send (default 48)")
    demo.add_argument("--rate", type=float, default=1.5, help="mean arrivals per second (default 1.5)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the load (default 0)")
    demo.add_argument("--json", metavar="OUT", default=None, help="also write the report as JSON")
    demo.add_argument("--planner", action="store_true", help="also run the planner (it may rescale mid-run)")
    demo.set_defaults(func=_demo)

    fe = subparsers.add_parser(
        "frontend", help="run the OpenAI-compatible frontend of a deployment (as in its Kubernetes pod)",
        description="Serve the OpenAI-compatible API, routing over the deployment's worker registry in "
        "Redis. Reads MOEPLANE_ENGINE_CONFIG, MOEPLANE_REDIS_URL, MOEPLANE_GRPC_TOKEN and MOEPLANE_API_KEY.",
    )
    fe.add_argument("--engine-config", default=None, help="engine.json (default: $MOEPLANE_ENGINE_CONFIG)")
    fe.add_argument("--redis-url", default=None, help="Redis URL (default: $MOEPLANE_REDIS_URL)")
    fe.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    fe.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    fe.add_argument("--request-timeout", type=float, default=None,
                    help="request timeout in seconds (default: spec.serving.requestTimeoutSeconds)")
    fe.add_argument("--api-key", default=None,
                    help="require this key as 'Authorization: Bearer KEY' (default: $MOEPLANE_API_KEY; "
                    "unset: no key); /health and /metrics stay open")
    fe.add_argument("--shutdown-delay", type=_seconds, default=0.0,
                    help="after SIGTERM, keep serving this many seconds with /health 503 'draining', "
                    "while the Service stops sending clients here (default 0)")
    fe.add_argument("--drain-timeout", type=_seconds, default=0.0,
                    help="then let requests in flight or queued finish for up to this many seconds "
                    "(default 0)")
    fe.set_defaults(func=_frontend)

    pool = subparsers.add_parser(
        "pool", help="run a pool's EP groups from its Ray head (as in the operator's RayCluster)",
        description="Join the pool's Ray cluster, start one group controller per EP group that fits it "
        "(the ranks run on the worker nodes) and keep each registered in Redis. Reads "
        "MOEPLANE_ENGINE_CONFIG, MOEPLANE_POOL_LAYOUT, MOEPLANE_ROLE, MOEPLANE_POOL, MOEPLANE_REVISION, "
        "MOEPLANE_REDIS_URL, MOEPLANE_GRPC_TOKEN and MOEPLANE_POD_IP.",
    )
    from moeplane.workers.pool.args import add_arguments as add_pool_arguments

    add_pool_arguments(pool)
    pool.set_defaults(func=_pool)

    from moeplane.workers.eplb import cli as eplb_cli

    eplb_cli.register(subparsers)


def add_stack_arguments(p: argparse.ArgumentParser, default_port: int) -> None:
    from moeplane.workers.embedded.defaults import DEFAULT_MANIFEST  # light: no torch, no Ray

    p.add_argument("-f", "--file", default=str(DEFAULT_MANIFEST),
                   help="MoEDeployment manifest (default: examples/tiny-cpu.yaml)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=default_port,
                   help=f"frontend port (default {default_port}; 0: any free port)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="longest prompt + output in tokens (default: spec.serving.maxModelLen)")
    p.add_argument("--request-timeout", type=float, default=None,
                   help="request timeout in seconds (default: spec.serving.requestTimeoutSeconds)")
    p.add_argument("--planner-port", type=int, default=None,
                   help="planner/dashboard port (default: frontend port + 1; 0: any free port)")


# The handlers import the stack lazily: `moeplane --help` must not pay for torch and Ray.
def _up(args: argparse.Namespace) -> int:
    from moeplane.workers.embedded.commands import run_up

    return run_up(args)


def _demo(args: argparse.Namespace) -> int:
    from moeplane.workers.embedded.commands import run_demo

    return run_demo(args)


def _pool(args: argparse.Namespace) -> int:
    from moeplane.workers.pool.main import run

    return run(args)


def _frontend(args: argparse.Namespace) -> int:
    from moeplane.workers.frontend.main import run

    return run(args)


def _seconds(text: str) -> float:
    """A duration flag: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be >= 0 and finite")
    return value
