"""Running the operator against an emulated cluster in tests: in a thread, with a fast resync, and
checking every API call it made against the declared RBAC rules."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from moeplane.operator import rbac
from moeplane.operator.config import OperatorConfig
from moeplane.operator.handlers import OperatorState
from moeplane.operator.runner import run_operator

from tests.kube.cluster import EmulatedCluster


def check_rbac(cluster: EmulatedCluster, collected: set[tuple[str, str, str]]) -> None:
    seen = cluster.rbac_seen("operator")
    collected |= seen
    missing = sorted(call for call in seen if not rbac.allowed(*call))
    assert not missing, f"operator calls not covered by moeplane.operator.rbac.RULES: {missing}"


@dataclass
class RunningOperator:
    config: OperatorConfig
    state: OperatorState


@contextmanager
def operator_in_thread(
    cluster: EmulatedCluster, config: OperatorConfig, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningOperator]:
    """The operator on its own event loop in a thread, as the `operator` user of the cluster."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig("operator")))
    state = OperatorState(config)
    loop = asyncio.new_event_loop()
    flags: dict[str, asyncio.Event] = {}
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            flags["stop"], flags["ready"] = asyncio.Event(), asyncio.Event()
            started.set()
            await run_operator(config, state=state, stop_flag=flags["stop"], ready_flag=flags["ready"])

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported at teardown
            failure.append(exc)
        finally:
            started.set()
            loop.close()

    thread = threading.Thread(target=run, name="moeplane-operator", daemon=True)
    thread.start()
    assert started.wait(10), "the operator thread did not start"
    cluster.wait_for(
        lambda: failure or ("ready" in flags and flags["ready"].is_set()),
        timeout_s=30,
        what="the operator to start",
    )
    assert not failure, failure
    try:
        yield RunningOperator(config, state)
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(flags["stop"].set)
        thread.join(timeout=20)
        assert not thread.is_alive(), "the operator did not stop within 20 s"


FAST = {"namespaces": ("default",), "resync_s": 1.0, "wait_s": 0.3, "liveness_endpoint": None}
