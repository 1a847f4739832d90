"""`moeplane cleanup`: delete MoEDeployments so that uninstalling completes.

Two uses:
- `moeplane cleanup --all [-n NS ...] [--timeout-seconds S]`: the chart's pre-delete hook. It deletes
  every MoEDeployment the release's operator serves while the operator still runs, and waits
  (bounded) until they are gone: the operator's finalizer deletes each deployment's Redis keys and
  garbage collection its children. Exit 1, naming what remains, if they are not gone in time.
- `moeplane cleanup -n NS NAME ...`: a MoEDeployment deleted while no operator runs waits forever on
  the `moeplane.io/cleanup` finalizer. This deletes it (if not yet), deletes its Redis keys when
  `--redis-url` is given, removes the finalizer, and waits until it is gone (its children then go
  by garbage collection).

Credentials: the pod's ServiceAccount, else the kubeconfig (`KUBECONFIG`), as the operator logs in.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from moeplane.operator.kinds import MOEDEPLOYMENT
from moeplane.operator.kube import ApiError, HttpKubeApi, login
from moeplane.operator.names import FINALIZER


class CleanupError(RuntimeError):
    pass


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cleanup", help="delete MoEDeployments (the chart's pre-delete hook; or with no operator running)"
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="MoEDeployments to clean up without an operator")
    p.add_argument(
        "-n", "--namespace", action="append", default=[], dest="namespaces",
        help="namespace (repeatable); with --all, default: every namespace",
    )  # fmt: skip
    p.add_argument("--all", action="store_true", help="delete every MoEDeployment and wait for the operator")
    p.add_argument("--redis-url", default=None, help="also delete the deployments' Redis keys (NAME mode)")
    p.add_argument("--timeout-seconds", type=float, default=300.0, help="how long to wait (default 300)")
    p.set_defaults(func=_run)


def _login() -> HttpKubeApi:
    import kopf

    settings = kopf.OperatorSettings()
    info = login(settings=settings)
    if info is None:
        raise CleanupError("no credentials: neither a ServiceAccount token nor a kubeconfig")
    return HttpKubeApi(info)


def _ids(items: Sequence[dict[str, Any]]) -> list[str]:
    return sorted(f"{o['metadata'].get('namespace')}/{o['metadata']['name']}" for o in items)


async def _remaining(api: HttpKubeApi, namespaces: Sequence[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for ns in namespaces or [""]:
        found += await api.list(MOEDEPLOYMENT, ns)
    return found


async def _wait_gone(
    api: HttpKubeApi, namespaces: Sequence[str], names: set[str] | None, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        left = [
            o for o in await _remaining(api, namespaces) if names is None or o["metadata"]["name"] in names
        ]
        if not left:
            return
        if time.monotonic() > deadline:
            raise CleanupError(
                f"after {timeout_s:g} s these MoEDeployments are still there: {', '.join(_ids(left))}. "
                "Is the operator running? Without one, run `moeplane cleanup -n NAMESPACE NAME`."
            )
        await asyncio.sleep(1.0)


async def delete_all(api: HttpKubeApi, namespaces: Sequence[str], timeout_s: float) -> list[str]:
    """Delete every MoEDeployment in `namespaces` (all when empty); wait until they are gone."""
    items = await _remaining(api, namespaces)
    for obj in items:
        meta = obj["metadata"]
        await api.delete(MOEDEPLOYMENT, str(meta["namespace"]), str(meta["name"]), uid=meta.get("uid"))
    await _wait_gone(api, namespaces, None, timeout_s)
    return _ids(items)


async def release(
    api: HttpKubeApi, namespace: str, name: str, redis_url: str | None, timeout_s: float
) -> str:
    """Clean one MoEDeployment without an operator: delete, Redis keys, finalizer; wait until gone."""
    obj = await api.get(MOEDEPLOYMENT, namespace, name)
    if obj is None:
        return f"{namespace}/{name}: not found (already gone)"
    if not obj["metadata"].get("deletionTimestamp"):
        await api.delete(MOEDEPLOYMENT, namespace, name, uid=obj["metadata"].get("uid"))
    keys = 0
    if redis_url:
        from moeplane.operator.cleanup import delete_deployment_keys

        keys = await delete_deployment_keys(redis_url, namespace, name)
    obj = await api.get(MOEDEPLOYMENT, namespace, name)
    if obj is not None and FINALIZER in (obj["metadata"].get("finalizers") or ()):
        kept = [f for f in obj["metadata"]["finalizers"] if f != FINALIZER]
        patch = {"metadata": {"finalizers": kept, "resourceVersion": obj["metadata"]["resourceVersion"]}}
        await api.patch(MOEDEPLOYMENT, namespace, name, patch)
    await _wait_gone(api, [namespace], {name}, timeout_s)
    return f"{namespace}/{name}: deleted" + (f", {keys} Redis keys removed" if redis_url else "")


async def _main(args: argparse.Namespace) -> list[str]:
    api = _login()
    try:
        if args.all:
            return [f"{i}: deleted" for i in await delete_all(api, args.namespaces, args.timeout_seconds)]
        (namespace,) = args.namespaces or ["default"]
        return [await release(api, namespace, n, args.redis_url, args.timeout_seconds) for n in args.names]
    finally:
        await api.close()


def _run(args: argparse.Namespace) -> int:
    if args.all == bool(args.names):
        print("moeplane cleanup: give NAME... (with one -n NAMESPACE) or --all", file=sys.stderr)
        return 2
    if args.names and len(args.namespaces) > 1:
        print("moeplane cleanup: NAME mode takes one -n NAMESPACE", file=sys.stderr)
        return 2
    try:
        lines = asyncio.run(_main(args))
    except (CleanupError, ApiError) as exc:
        print(f"moeplane cleanup: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0
