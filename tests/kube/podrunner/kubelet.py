"""The kubelet of one pod: volumes, init containers to completion, containers with restarts and probes,
and the pod's status, written back to the API server as the kubelet's status manager does.

Lifecycle (pkg/kubelet): scheduling checks (its claims exist) -> address -> volumes (FailedMount
retried) -> init containers one by one (a failure restarts it, or fails the pod under
restartPolicy Never) -> every container started in order -> per container: readiness, liveness and
startup probes; an exit is restarted per restartPolicy with CrashLoopBackOff (10 s doubling to 300 s).
Deletion stops every container with the pod's grace period (SIGTERM to PID 1, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from tests.kube.podrunner.containers import ContainerProcess, Exit, Stopped
from tests.kube.podrunner.images import Images
from tests.kube.podrunner.launch import PodContext, prepare
from tests.kube.podrunner.podspec import ConfigError, MountError, Unschedulable, materialise_volume
from tests.kube.podrunner.podstate import (
    BACKOFF_MAX_S,
    BACKOFF_START_S,
    ContainerState,
    PodIO,
    Termination,
    rfc3339,
)
from tests.kube.podrunner.prober import watch
from tests.kube.podrunner.sandbox import Sandbox, marker_env

log = logging.getLogger(__name__)
Obj = dict[str, Any]


class PodWorker:
    """Runs one pod until `stop()`; `pod` is refreshed by the runner from the API server."""

    def __init__(
        self, pod: Obj, sandbox: Sandbox, images: Images, io: PodIO, node_name: str, host_ip: str
    ) -> None:
        self.pod = pod
        self.sandbox = sandbox
        self.images = images
        self.io = io
        self.node_name = node_name
        self.host_ip = host_ip
        meta = pod["metadata"]
        self.key = (meta["namespace"], meta["name"])
        self.uid = meta["uid"]
        self.dir = sandbox.root / "pods" / f"{meta['namespace']}_{meta['name']}"
        self.ip = ""
        self.phase = "Pending"
        self.conditions: dict[str, Obj] = {}
        self.message = ""
        self.reason = ""
        self.init_states = [ContainerState(c, True) for c in (pod["spec"].get("initContainers") or [])]
        self.states = [ContainerState(c, False) for c in pod["spec"]["containers"]]
        self.volume_dirs: dict[str, Path] = {}
        self.pause: asyncio.subprocess.Process | None = None
        self.terminations: list[Termination] = []
        self.pause_pid: int | None = None
        self.task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.start_time = time.time()

    # ---- status ------------------------------------------------------------------------------------
    def _condition(self, kind: str, ok: bool, reason: str = "", message: str = "") -> None:
        status = "True" if ok else "False"
        old = self.conditions.get(kind)
        if old is not None and old["status"] == status and old.get("reason", "") == reason:
            return
        cond: Obj = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": rfc3339(time.time()),
        }
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        self.conditions[kind] = cond
        self._dirty.set()

    def status(self) -> Obj:
        unready = [s.name for s in self.states if not s.ready]
        if self.phase in ("Running", "Pending") and "Initialized" in self.conditions:
            ok = not unready and self.phase == "Running"
            msg = f"containers with unready status: [{' '.join(unready)}]" if unready else ""
            self._condition("ContainersReady", ok, "" if ok else "ContainersNotReady", msg)
            self._condition("Ready", ok, "" if ok else "ContainersNotReady", msg)
        out: Obj = {
            "phase": self.phase,
            "conditions": list(self.conditions.values()),
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "startTime": rfc3339(self.start_time),
            "qosClass": "Burstable",
        }
        if self.ip:
            out["podIP"] = self.ip
            out["podIPs"] = [{"ip": self.ip}]
        if self.reason:
            out["reason"] = self.reason
        if self.message:
            out["message"] = self.message
        if self.init_states:
            out["initContainerStatuses"] = [s.status() for s in self.init_states]
        out["containerStatuses"] = [s.status() for s in self.states]
        return out

    async def _flush(self) -> None:
        self._dirty.clear()
        await self.io.write_status(self.pod, self.status())

    # ---- the pod's life -------------------------------------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"pod-{self.key[0]}/{self.key[1]}")

    async def _run(self) -> None:
        try:
            await self._life()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s: the runner's kubelet failed", *self.key)
            raise

    async def _life(self) -> None:
        spec = self.pod["spec"]
        # Scheduling: its claims must exist (the scheduler keeps such a pod Pending).
        while not self._stop.is_set():
            try:
                self._check_claims()
                break
            except Unschedulable as exc:
                self._condition("PodScheduled", False, "Unschedulable", str(exc))
                await self._flush()
                if await self._sleep(1.0):
                    return
        self._condition("PodScheduled", True)
        self.ip = self.sandbox.addresses.pod_ip()
        self.pod.setdefault("status", {})["podIP"] = self.ip
        self.pod["status"]["hostIP"] = self.host_ip
        self._condition("PodReadyToStartContainers", True)
        self._condition(
            "Initialized",
            False,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(s.name for s in self.init_states)}]",
        )
        if not self.init_states:
            self._condition("Initialized", True)
        await self._flush()
        await self._setup_volumes()
        if self._stop.is_set():
            return
        if spec.get("shareProcessNamespace"):
            await self._start_pause()
        for state in self.init_states:
            if not await self._run_init(state):
                return
        self._condition("Initialized", True)
        for state in self.states:
            self._tasks.append(asyncio.create_task(self._supervise(state)))
        self.phase = "Running"
        self._dirty.set()
        while not self._stop.is_set():
            if self._dirty.is_set():
                await self._flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), 1.0)
            if self._all_done():
                break
        if self._dirty.is_set() and not self._stop.is_set():
            await self._flush()

    def _all_done(self) -> bool:
        policy = self.pod["spec"].get("restartPolicy") or "Always"
        if policy == "Always" or not all(t.done() for t in self._tasks):
            return False
        failed = any(s.exits and s.exits[-1].code != 0 for s in self.states)
        self.phase = "Failed" if failed else "Succeeded"
        self._dirty.set()
        return True

    def _check_claims(self) -> None:
        lookup = self.io.lookup()
        ns = self.key[0]
        for volume in self.pod["spec"].get("volumes") or ():
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim is None:
                continue
            if lookup("PersistentVolumeClaim", ns, claim) is None:
                raise Unschedulable(f'0/1 nodes are available: persistentvolumeclaim "{claim}" not found')
            if (ns, claim) not in self.io.claims():
                raise Unschedulable(
                    "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims"
                )

    async def _setup_volumes(self) -> None:
        reported: str | None = None
        while not self._stop.is_set():
            try:
                self.refresh_volumes()
                return
            except (MountError, Unschedulable) as exc:
                if str(exc) != reported:
                    reported = str(exc)
                    await self.io.event(self.pod, "Warning", "FailedMount", str(exc))
                for s in [*self.init_states, *self.states]:
                    s.state = {"waiting": {"reason": "ContainerCreating"}}
                await self._flush()
                if await self._sleep(2.0):
                    return

    def refresh_volumes(self) -> None:
        """(Re)write every volume from the API server (the kubelet syncs ConfigMaps and Secrets too)."""
        lookup, claims = self.io.lookup(), self.io.claims()
        for volume in self.pod["spec"].get("volumes") or ():
            medium = (volume.get("emptyDir") or {}).get("medium")
            base = self.sandbox.shm_root if medium == "Memory" else self.dir / "volumes"
            target = (
                base / f"{self.key[0]}_{self.key[1]}" / volume["name"]
                if medium == "Memory"
                else (base / volume["name"])
            )
            if "emptyDir" in volume and volume["name"] in self.volume_dirs:
                continue
            self.volume_dirs[volume["name"]] = materialise_volume(
                self.pod, volume, target, lookup, claims, self.io.token(self.uid)
            )

    async def _sleep(self, seconds: float) -> bool:
        """Wait `seconds` or until stopped; True when stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    # ---- containers -------------------------------------------------------------------------------------
    def _prepare(self, state: ContainerState) -> ContainerProcess:
        ctx = PodContext(self.pod, self.ip, self.dir, self.volume_dirs, self.pause_pid)
        return prepare(ctx, state, self.sandbox, self.images, self.io)

    async def _launch(self, state: ContainerState) -> bool:
        """Start the container; False (with a waiting state) when its config or image is wrong."""
        try:
            state.process = self._prepare(state)
        except ConfigError as exc:
            state.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            self._dirty.set()
            return False
        except LookupError as exc:
            state.state = {"waiting": {"reason": "ErrImagePull", "message": str(exc)}}
            self._dirty.set()
            return False
        except MountError as exc:
            state.state = {"waiting": {"reason": "CreateContainerError", "message": str(exc)}}
            self._dirty.set()
            return False
        await state.process.start()
        state.state = {"running": {"startedAt": rfc3339(state.process.started_at)}}
        state.started = True
        self._dirty.set()
        return True

    def _terminated(self, state: ContainerState, ended: Exit) -> None:
        state.exits.append(ended)
        term: Obj = {
            "exitCode": ended.code,
            "reason": ended.reason,
            "startedAt": rfc3339(ended.started_at),
            "finishedAt": rfc3339(ended.finished_at),
            "containerID": state.status().get("containerID", ""),
        }
        if ended.signal:
            term["signal"] = ended.signal
        state.state = {"terminated": term}
        state.ready = False
        state.started = False
        self._dirty.set()

    async def _run_init(self, state: ContainerState) -> bool:
        policy = self.pod["spec"].get("restartPolicy") or "Always"
        backoff = BACKOFF_START_S
        while not self._stop.is_set():
            if not await self._launch(state):
                if await self._sleep(2.0):
                    return False
                continue
            assert state.process is not None
            waiter = asyncio.ensure_future(state.process.wait())
            stopper = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not waiter.done():
                waiter.cancel()
                return False
            ended = waiter.result()
            self._terminated(state, ended)
            if ended.code == 0:
                return True
            if policy == "Never":
                self.phase = "Failed"
                self._dirty.set()
                await self._flush()
                return False
            state.last_state = state.state
            state.restarts += 1
            state.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {backoff:g}s restarting failed container",
                }
            }
            await self._flush()
            if await self._sleep(backoff):
                return False
            backoff = min(BACKOFF_MAX_S, backoff * 2)
        return False

    async def _supervise(self, state: ContainerState) -> None:
        policy = self.pod["spec"].get("restartPolicy") or "Always"
        backoff = BACKOFF_START_S
        while not self._stop.is_set():
            if not await self._launch(state):
                if await self._sleep(2.0):
                    return
                continue
            assert state.process is not None
            probes = asyncio.create_task(self._probe_loop(state))
            ended = await state.process.wait()
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes
            if self._stop.is_set():
                return
            self._terminated(state, ended)
            restart = policy == "Always" or (policy == "OnFailure" and ended.code != 0)
            if not restart:
                return
            ran_s = ended.finished_at - ended.started_at
            if ran_s > 600:
                backoff = BACKOFF_START_S
            state.last_state = state.state
            state.restarts += 1
            state.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {backoff:g}s restarting failed container="
                    f"{state.name} pod={self.key[1]}",
                }
            }
            self._dirty.set()
            if await self._sleep(backoff):
                return
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _probe_loop(self, state: ContainerState) -> None:
        assert state.process is not None

        async def unhealthy(message: str) -> None:
            await self.io.event(self.pod, "Warning", "Unhealthy", message)

        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        await watch(state, state.process, self.ip, self._dirty.set, unhealthy, grace)

    async def _start_pause(self) -> None:
        self.pause = await asyncio.create_subprocess_exec(
            *self.sandbox.pause_argv(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env={
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                **marker_env(self.sandbox.runner_id, self.uid, "POD"),
            },
        )
        probe = ContainerProcess([], {}, self.dir, self.dir / "pause.log")
        probe.proc = self.pause
        deadline = time.monotonic() + 10
        while self.pause_pid is None and time.monotonic() < deadline:
            pid = probe.init_pid()
            self.pause_pid = pid if pid != self.pause.pid else None
            if self.pause_pid is None:
                await asyncio.sleep(0.05)
        if self.pause_pid is None:
            raise RuntimeError(f"pod {self.key}: the pause process did not start")

    # ---- stopping --------------------------------------------------------------------------------------
    async def stop(self, grace_s: float | None = None) -> None:
        """Stop every container (SIGTERM, then SIGKILL after the grace period) and the pod's loop."""
        self._stop.set()
        grace = (
            float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)) if grace_s is None else grace_s
        )
        running = [s for s in [*self.init_states, *self.states] if s.process is not None]
        stopped = await asyncio.gather(
            *(s.process.stop(grace) for s in running if s.process), return_exceptions=True
        )
        for state, result in zip(running, stopped, strict=True):
            if isinstance(result, Stopped):
                self.terminations.append(
                    Termination(self.key[1], state.name, result.seconds, result.killed, grace)
                )
        if self.pause is not None and self.pause.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.pause.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pause.wait(), 10)
        for t in self._tasks:
            t.cancel()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    def kill_container_processes(self, container: str | None = None) -> int:
        """Fault injection: SIGKILL every process of the pod's containers (or one of them)."""
        return sum(
            s.process.kill_processes()
            for s in self.states
            if s.process is not None and (container is None or s.name == container)
        )

    def running_pids(self) -> list[int]:
        return [
            s.process.host_pid
            for s in [*self.init_states, *self.states]
            if s.process is not None and s.process.alive() and s.process.host_pid
        ]
