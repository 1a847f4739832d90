"""Sampling a deployment's capacity through a step: serving groups (Redis registry) and provisioned
groups (RayCluster replicas), every `interval_s`.

A group *serves* while its registration is in the registry hash, says `live` (not starting,
draining, restarting or failed) and its heartbeat key is alive.
How a group left is kept too: *drained* (it turned draining, or its registration was removed while
its heartbeat still ran: the supervisor deregistered it) or *died* (its heartbeat expired while the
registration stayed, or it turned restarting or failed).
*Provisioned* groups are the EP groups the pools' RayClusters ask for (sum of worker-group
replicas): what a rollout or scale-up holds in GPUs at that moment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from moeplane.bus.keys import DeploymentKeys


@dataclass(frozen=True)
class Sample:
    at_s: float
    serving: dict[str, frozenset[str]]  # role -> group ids
    provisioned: int


def read_registry(client: redis.Redis, keys: DeploymentKeys) -> tuple[dict[str, set[str]], set[str]]:
    """(serving group ids by role, registered group ids whose heartbeat is gone or that are down:
    restarting or failed)."""
    import json

    records = client.hgetall(keys.workers())
    serving: dict[str, set[str]] = {"prefill": set(), "decode": set()}
    stale: set[str] = set()
    for raw_id, raw in records.items():
        group_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        record = json.loads(raw)
        role, state = record.get("role", ""), record.get("state", "live")
        if not client.exists(keys.worker_alive(group_id)) or state in ("restarting", "failed"):
            stale.add(group_id)
        elif state == "live":
            serving.setdefault(role, set()).add(group_id)
    return serving, stale


@dataclass
class CapacitySampler:
    redis_url: str
    keys: DeploymentKeys
    provisioned: Callable[[], int]
    interval_s: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    died: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> CapacitySampler:
        self._thread = threading.Thread(target=self._run, name="capacity-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        before: dict[str, str] = {}
        try:
            while not self._stop.is_set():
                try:
                    serving, stale = read_registry(client, self.keys)
                    provisioned = self.provisioned()
                except Exception:  # a missed sample is not a capacity dip; the next one counts
                    self._stop.wait(self.interval_s)
                    continue
                now = {g: role for role, groups in serving.items() for g in groups}
                for group in set(before) - set(now):
                    (self.died if group in stale else self.drained).append(group)
                before = now
                self.samples.append(
                    Sample(time.time(), {r: frozenset(g) for r, g in serving.items()}, provisioned)
                )
                self._stop.wait(self.interval_s)
        finally:
            client.close()

    def serving_counts(self) -> list[int]:
        return [sum(len(g) for g in s.serving.values()) for s in self.samples]

    @property
    def min_serving(self) -> int:
        counts = self.serving_counts()
        return min(counts) if counts else 0

    @property
    def max_provisioned(self) -> int:
        return max((s.provisioned for s in self.samples), default=0)
