"""`moeplane operator`: run the Kopf operator."""

from __future__ import annotations

import argparse
import asyncio
import sys

from moeplane.operator.config import ConfigError, OperatorConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "operator", help="run the Kubernetes operator (MoEDeployment -> pools, RayClusters)"
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        dest="namespaces",
        help="serve this namespace (repeatable); default: all namespaces",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace")
    peer = p.add_mutually_exclusive_group()
    peer.add_argument(
        "--standalone", action="store_true", default=True, help="run alone, without peering (the default)"
    )
    peer.add_argument(
        "--peering", metavar="NAME", help="coordinate with other operator replicas through this KopfPeering"
    )
    p.add_argument(
        "--liveness",
        metavar="URL",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint served by the operator (default: %(default)s; 'none' disables)",
    )
    p.add_argument(
        "--redis-url",
        default=None,
        help="Redis holding the deployments' keys, cleaned when a deployment is deleted",
    )
    p.add_argument("--resync-seconds", type=float, default=30.0, help="periodic reconcile interval")
    p.add_argument("--wait-seconds", type=float, default=5.0, help="retry delay while waiting on children")
    p.add_argument("--image", default=None, help="default image of workers and frontends")
    p.add_argument(
        "--image-pull-secret",
        action="append",
        default=[],
        dest="image_pull_secrets",
        metavar="NAME",
        help="image pull Secret of every pod the operator makes (repeatable; it must exist in each "
        "MoEDeployment's namespace)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=_run)
    # `moeplane cleanup`, the chart's pre-delete hook and the no-operator clean-up, lives beside it.
    from moeplane.operator import cleanup_cli

    cleanup_cli.register(subparsers)


def config_from_args(args: argparse.Namespace) -> OperatorConfig:
    """The operator's configuration from its parsed flags; ConfigError names a bad one."""
    extra = {"image": args.image} if args.image else {}
    return OperatorConfig(
        namespaces=tuple(args.namespaces),
        standalone=args.peering is None,
        peering_name=args.peering or "moeplane",
        liveness_endpoint=None if args.liveness == "none" else args.liveness,
        redis_url=args.redis_url,
        resync_s=args.resync_seconds,
        wait_s=args.wait_seconds,
        image_pull_secrets=tuple(args.image_pull_secrets),
        **extra,
    )


def _run(args: argparse.Namespace) -> int:
    from moeplane.operator.runner import configure_logging, run_operator

    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"moeplane operator: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.verbose)
    asyncio.run(run_operator(config))
    return 0
