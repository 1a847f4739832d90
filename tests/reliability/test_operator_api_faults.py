"""The API server answers the operator's MoEPool creates with 500 and 409, or slowly (3 s each):
the operator does not spin, and converges to exactly one of each child once the API server
recovers, with no duplicate create while a slow one is in flight.

"Does not spin": while every create of a MoEPool fails, the test waits for ATTEMPTS failed creates
(however long the machine takes) and checks, on the API server's own clock, that they were spread
out: under MAX_ATTEMPTS_PER_S (its resync is every 1 s in these tests). Every wait in the operator
is a sleep, and a sleep is never shorter on a busy machine, so the bound only gets easier under
load; a spinning operator makes hundreds per second. A reconcile that hit a 409, 429, 5xx or a
timeout is retried with exponential backoff from `wait_s` (capped at 60 s), so convergence after
the faults takes seconds, not kopf's default minute. "Later" is counted in the operator's own
reconciles, never in seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from moeplane.operator.config import OperatorConfig

from tests.kube.cluster import EmulatedCluster
from tests.kube.http_requests import ApiCall
from tests.operator.harness import FAST, RunningOperator, operator_in_thread

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
POOLS = kmock.resource("moeplane.io", "v1alpha1", "moepools")
ATTEMPTS = 8
# Per second of failure: a handful of attempts (resync every 1 s, kopf's own retries, both pools);
# a spinning operator makes hundreds.
MAX_ATTEMPTS_PER_S = 6
WAIT_S = 90.0  # a generous bound on every wait: a healthy run takes seconds


@pytest.fixture
def start_operator(
    kube_crds: EmulatedCluster, kuberay: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Any]]:
    def start(**overrides: Any) -> Any:
        return operator_in_thread(kube_crds, OperatorConfig(**{**FAST, **overrides}), monkeypatch)

    yield start


def children(cluster: EmulatedCluster) -> dict[str, list[str]]:
    kinds = {
        "MoEPool": ("moeplane.io/v1alpha1", "MoEPool"),
        "RayCluster": ("ray.io/v1", "RayCluster"),
        "ConfigMap": ("v1", "ConfigMap"),
        "Service": ("v1", "Service"),
        "Deployment": ("apps/v1", "Deployment"),
    }
    return {
        k: sorted(o["metadata"]["name"] for o in cluster.list(*kind, "default")) for k, kind in kinds.items()
    }


EXPECTED = {"MoEPool": 2, "RayCluster": 2, "ConfigMap": 1, "Service": 3, "Deployment": 1}


def pool_post_calls(cluster: EmulatedCluster) -> list[ApiCall]:
    return [c for c in cluster.calls("operator") if c.rbac == ("create", "moeplane.io", "moepools")]


def pool_posts(cluster: EmulatedCluster) -> int:
    return len(pool_post_calls(cluster))


def wait_resyncs(cluster: EmulatedCluster, operator: RunningOperator, rounds: int) -> None:
    """Until the operator has reconciled the deployment `rounds` more times (its resync timer)."""
    counts = operator.state.counters.reconciles
    start = counts["moedeployments"]
    cluster.wait_for(
        lambda: counts["moedeployments"] - start >= rounds,
        timeout_s=WAIT_S,
        what=f"{rounds} more resyncs of the deployment",
    )


class Faulty:
    """A kmock reaction that, while `on`, answers 500 and 409 in turn (or stalls `stall_s`, then
    passes through); once off, passes every request through to the store."""

    def __init__(self, stall_s: float = 0.0) -> None:
        self.stall_s, self.on, self.hits = stall_s, True, 0
        self.statuses: set[int] = set()

    async def __call__(self) -> Any:
        if not self.on:
            # Not `return None`: kmock keeps the last Response's status on the reaction and would
            # answer an empty 500; NotImplementedError hands the request to the store untouched.
            raise NotImplementedError
        self.hits += 1
        if self.stall_s:
            await asyncio.sleep(self.stall_s)
            return None
        status = 500 if self.hits % 2 else 409
        self.statuses.add(status)
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": status,
            "reason": "Conflict" if status == 409 else "InternalError",
            "message": f"injected {status}",
        }
        return kmock.Response(status=status, payload=body)


def apply_tiny(cluster: EmulatedCluster) -> None:
    body = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def counts(cluster: EmulatedCluster) -> dict[str, int]:
    return {k: len(v) for k, v in children(cluster).items()}


def test_500_and_409_do_not_spin_and_converge_once_the_api_server_recovers(
    kube_crds: EmulatedCluster, start_operator: Any
) -> None:
    cluster = kube_crds
    faulty = Faulty()
    cluster.emulator["post", POOLS] << faulty
    with start_operator() as operator:
        apply_tiny(cluster)
        cluster.wait_for(lambda: faulty.hits >= 1, what="the first injected failure", interval_s=0.05)
        attempts = cluster.wait_for(
            lambda: len(calls := pool_post_calls(cluster)) >= ATTEMPTS and calls,
            timeout_s=WAIT_S,
            what=f"{ATTEMPTS} failed MoEPool creates",
        )
        assert all(c.code >= 400 for c in attempts), [c.code for c in attempts]
        span_s = attempts[-1].at_s - attempts[0].at_s
        assert len(attempts) - 1 <= MAX_ATTEMPTS_PER_S * span_s, (len(attempts), span_s)
        assert counts(cluster)["MoEPool"] == 0
        faulty.on = False
        # The backoff after a run of failures is a few seconds with the tests' short wait_s.
        cluster.wait_for(
            lambda: counts(cluster) == EXPECTED, what="convergence", timeout_s=WAIT_S, interval_s=0.3
        )
        wait_resyncs(cluster, operator, rounds=2)  # later: still exactly one of each, none orphaned
        assert counts(cluster) == EXPECTED, children(cluster)
        assert faulty.statuses >= {500, 409} or faulty.hits == 1, faulty.statuses


def test_a_slow_api_server_gets_no_duplicate_creates(kube_crds: EmulatedCluster, start_operator: Any) -> None:
    """Every MoEPool create takes 3 s: resyncs meanwhile must not create the same pool again."""
    cluster = kube_crds
    cluster.emulator["post", POOLS] << Faulty(stall_s=3.0)
    with start_operator() as operator:
        apply_tiny(cluster)
        cluster.wait_for(
            lambda: counts(cluster) == EXPECTED, what="convergence", timeout_s=WAIT_S, interval_s=0.3
        )
        wait_resyncs(cluster, operator, rounds=2)
        assert counts(cluster) == EXPECTED, children(cluster)
        assert pool_posts(cluster) == 2
