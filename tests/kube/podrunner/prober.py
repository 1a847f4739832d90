"""A running container's probes, on the kubelet's schedule (pkg/kubelet/prober): startup first, then
readiness and liveness, each after its initial delay and every period. A failed liveness probe
restarts the container."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from tests.kube.podrunner.containers import ContainerProcess
from tests.kube.podrunner.podstate import ContainerState
from tests.kube.podrunner.probes import ProbeContext, ProbeSpec, ProbeState, run_once


def _state(spec: dict[str, object], key: str, initial: bool) -> ProbeState | None:
    probe = spec.get(key)
    return ProbeState(ProbeSpec.from_k8s(probe), initial) if isinstance(probe, dict) else None


async def watch(
    state: ContainerState,
    process: ContainerProcess,
    pod_ip: str,
    changed: Callable[[], None],
    unhealthy: Callable[[str], Awaitable[None]],
    grace_s: float,
) -> None:
    """Probe `process` until it ends; `changed()` when readiness flips, `unhealthy(message)` for
    the events the kubelet posts."""
    spec = state.spec
    state.readiness = _state(spec, "readinessProbe", False)
    state.liveness = _state(spec, "livenessProbe", True)
    state.startup = _state(spec, "startupProbe", False)
    ctx = ProbeContext(pod_ip, spec, state.env, process.init_pid)
    started = time.monotonic()
    if state.readiness is None and state.startup is None:
        state.ready = True
        changed()
    while process.alive():
        now = time.monotonic()
        due: list[tuple[str, ProbeState]] = []
        for kind, probe in (
            ("startup", state.startup),
            ("readiness", state.readiness),
            ("liveness", state.liveness),
        ):
            if probe is None:
                continue
            if kind != "startup" and state.startup is not None and not state.startup.result:
                continue
            if kind == "startup" and probe.result:
                continue
            if now >= max(started + probe.spec.initial_delay_s, probe.last_run + probe.spec.period_s):
                due.append((kind, probe))
        for kind, probe in due:
            ok, message = await run_once(probe.spec, ctx)
            if not process.alive():
                return
            flipped = probe.record(ok, message)
            if kind == "readiness" and flipped:
                state.ready = probe.result
                changed()
            if kind == "startup" and flipped and probe.result and state.readiness is None:
                state.ready = True
                changed()
            if kind == "liveness" and flipped and not probe.result:
                await unhealthy(f"Liveness probe failed: {message}")
                process.note(f"Liveness probe failed: {message}; the kubelet restarts the container")
                await process.stop(grace_s)
                return
            if kind == "readiness" and not ok and probe.failures == probe.spec.failure_threshold:
                await unhealthy(f"Readiness probe failed: {message}")
        await asyncio.sleep(0.25)
