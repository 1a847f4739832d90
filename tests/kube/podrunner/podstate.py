"""What the kubelet keeps per pod and per container, and what it needs from the cluster."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.kube.podrunner.containers import ContainerProcess, Exit
from tests.kube.podrunner.podspec import Lookup
from tests.kube.podrunner.probes import ProbeState

Obj = dict[str, Any]
BACKOFF_START_S = 10.0
BACKOFF_MAX_S = 300.0


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class PodIO(Protocol):
    """What a pod's kubelet needs from the cluster."""

    def lookup(self) -> Lookup: ...

    def claims(self) -> Mapping[tuple[str, str], Path]: ...

    async def write_status(self, pod: Obj, status: Obj) -> None: ...

    async def event(self, obj: Obj, kind: str, reason: str, message: str) -> None: ...

    def token(self, pod_uid: str) -> str | None: ...

    def node_env(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class Termination:
    """How one container of a deleted pod ended: `killed` when SIGTERM did not end it within the
    grace period (its PID 1 ignores SIGTERM, or shuts down too slowly)."""

    pod: str
    container: str
    seconds: float
    killed: bool
    grace_s: float


@dataclass
class ContainerState:
    spec: Obj
    init: bool
    process: ContainerProcess | None = None
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None
    startup: ProbeState | None = None
    exits: list[Exit] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> Obj:
        out: Obj = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restarts,
            "started": self.started,
            "state": self.state,
        }
        if self.process is not None and self.process.host_pid:
            out["containerID"] = f"podrunner://{self.process.host_pid}"
        if self.last_state:
            out["lastState"] = self.last_state
        return out
