"""Where the runner's pods live on this one machine: addresses, DNS, filesystems and process isolation.

The design, and why:

- **Addresses.** Each pod gets its own loopback address 127.R.x.y (R random per runner, so two runners on
  one machine do not meet). `podnet.c`, preloaded into every process of the pod, makes a wildcard or
  loopback bind() bind that address and a connect() to localhost reach it. So two Ray heads both
  listen on 6379, KubeRay's commands and probes run unchanged, and nothing is rewritten for ports.
  Addresses 127.R.0.x are the "node's": services the test runs outside any pod (its Redis).
- **DNS.** The hosts file the runner keeps (Services: headless ones resolve to their pods, ClusterIP
  ones to one ready endpoint; pods: their hostname), served to the pods by `podnet.c` with a pod's
  search path. gRPC's own resolver (c-ares) reads /etc/resolv.conf and would miss it, so pods get
  GRPC_DNS_RESOLVER=native (the system resolver, i.e. this file).
- **Processes.** Each container runs in its own PID, mount and UTS namespaces (`unshare`), as a
  container does: its command is PID 1, it sees only its own processes (Ray's `address="auto"` scans
  the processes it can see; on a shared host it would find every other pod's Ray), its hostname is
  the pod's, and killing the namespace's init kills everything the container started. `setpriv
  --pdeathsig` ties every container to the runner's thread: nothing outlives the test session.
- **Filesystems.** The container's /tmp is a private directory bind-mounted over /tmp (Ray keeps its
  session under /tmp/ray and tells worker nodes the head's temp path, which must mean each pod's own
  /tmp), and volumes mounted under /tmp, /dev/shm or /run (the service account token) are
  bind-mounted there. Every other volume is a
  local directory, and env values and arguments naming a path under (or above) its mountPath are
  rewritten to it (`podspec.PathMap`).

Needs: root or unprivileged user namespaces (`unshare`), a C compiler for the shim, and `mount`,
`hostname`, `setpriv` (util-linux). `unavailable()` says which is missing.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SHIM_SOURCE = Path(__file__).with_name("podnet.c")
# The launcher a container starts with: /proc for a shared PID namespace, bind mounts (a private
# tmpfs on /run first when one goes there: the container's /run, e.g. for the service account
# token at /var/run/secrets/...), hostname, then exec the command.
# Arguments: proc|noproc HOSTNAME SRC|DST ... -- COMMAND...
LAUNCHER = (
    'if [ "$1" = proc ]; then mount -t proc proc /proc || exit 111; fi; shift; '
    'h="$1"; shift; runfs=; '
    'while [ "$1" != "--" ]; do '
    's="${1%%|*}"; d="${1#*|}"; '
    'case "$d" in /run/*|/var/run/*) if [ -z "$runfs" ]; then '
    'mount -t tmpfs tmpfs "$(readlink -f /var/run)" || exit 111; runfs=1; fi;; esac; '
    'case "$d" in /run/*|/var/run/*|/tmp/*) if [ -d "$s" ]; then mkdir -p "$d"; '
    'else mkdir -p "$(dirname "$d")"; touch "$d"; fi;; esac; '
    'mount --bind "$s" "$d" || exit 111; shift; done; shift; '
    'hostname "$h" 2>/dev/null; exec "$@"'
)
# A pod's pause process when its containers share one PID namespace (shareProcessNamespace): it is
# PID 1 there and reaps what the containers orphan, as the pause container does.
PAUSE = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"


class SandboxUnavailable(RuntimeError):
    pass


def _tool(name: str) -> str | None:
    return shutil.which(name)


def _user_flags() -> list[str]:
    return [] if os.geteuid() == 0 else ["--user", "--map-root-user"]


def namespace_flags() -> list[str]:
    """unshare's flags: PID, mount and UTS namespaces (as root), in a user namespace otherwise."""
    return [*_user_flags(), "--pid", "--fork", "--mount", "--uts", "--mount-proc", "--kill-child=SIGKILL"]


def unavailable() -> str | None:
    """Why pods cannot run on this machine, or None when they can."""
    for tool in ("unshare", "setpriv", "mount", "hostname", "bash"):
        if _tool(tool) is None:
            return f"`{tool}` is not installed (util-linux / bash)"
    if _tool("cc") is None and _tool("gcc") is None:
        return "no C compiler (cc or gcc) to build the pod network shim tests/kube/podrunner/podnet.c"
    probe = subprocess.run(
        ["unshare", *namespace_flags(), "/bin/sh", "-c", "mount --bind /proc /proc && echo ok"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0 or "ok" not in probe.stdout:
        return (
            f"cannot create PID/mount/UTS namespaces with unshare: {probe.stderr.strip() or probe.returncode}"
        )
    return None


def build_shim(out_dir: Path) -> Path:
    """Compile podnet.c into `out_dir`/podnet.so."""
    out = out_dir / "podnet.so"
    compiler = _tool("cc") or _tool("gcc")
    if compiler is None:
        raise SandboxUnavailable("no C compiler for podnet.c")
    proc = subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", "-Wall", "-o", str(out), str(SHIM_SOURCE), "-ldl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise SandboxUnavailable(f"podnet.c did not compile: {proc.stderr}")
    return out


class AddressPool:
    """Pod addresses 127.R.x.y (x >= 1), and node addresses 127.R.0.y; freed addresses are not reused
    (a dead pod's address must not answer for a new pod while clients still hold it)."""

    def __init__(self, second_octet: int | None = None) -> None:
        self.octet = second_octet if second_octet is not None else 16 + secrets.randbelow(224)
        self._next = 0
        self._next_node = 10
        self._lock = threading.Lock()

    def pod_ip(self) -> str:
        with self._lock:
            index = self._next
            self._next += 1
        if index >= 254 * 254:
            raise SandboxUnavailable("the runner ran out of pod addresses")
        return f"127.{self.octet}.{1 + index // 254}.{1 + index % 254}"

    def node_ip(self) -> str:
        with self._lock:
            index = self._next_node
            self._next_node += 1
        return f"127.{self.octet}.0.{index}"

    def owns(self, ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip) in ipaddress.ip_network(f"127.{self.octet}.0.0/16")
        except ValueError:
            return False


class HostsFile:
    """The cluster DNS the shim serves: `IP NAME` lines, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._current: tuple[tuple[str, str], ...] = ()
        self._lock = threading.Lock()
        self.write([])

    def write(self, records: Iterable[tuple[str, str]]) -> bool:
        """Replace the records (name, ip); True when they changed."""
        ordered = tuple(sorted(set(records)))
        with self._lock:
            if ordered == self._current:
                return False
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(f"{ip} {name}\n" for name, ip in ordered))
            tmp.replace(self.path)
            self._current = ordered
        return True

    def lookup(self, name: str) -> list[str]:
        with self._lock:
            return [ip for n, ip in self._current if n == name]


@dataclass(frozen=True)
class Sandbox:
    """Paths and settings shared by every pod of one runner."""

    root: Path  # not under /tmp: containers get their own /tmp
    shm_root: Path  # memory-backed emptyDirs
    shim: Path
    hosts: HostsFile
    addresses: AddressPool
    runner_id: str

    @classmethod
    def create(cls, root: Path | None = None) -> Sandbox:
        reason = unavailable()
        if reason is not None:
            raise SandboxUnavailable(reason)
        runner_id = secrets.token_hex(4)
        base = root or Path("/var/tmp")
        top = base / f"moeplane-pods-{runner_id}"
        if str(top).startswith("/tmp/"):
            raise SandboxUnavailable(
                f"the pod root {top} may not be under /tmp (each container has its own /tmp)"
            )
        top.mkdir(parents=True)
        shm = Path("/dev/shm") / f"moeplane-pods-{runner_id}"
        shm.mkdir()
        return cls(top, shm, build_shim(top), HostsFile(top / "hosts"), AddressPool(), runner_id)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.shm_root, ignore_errors=True)

    def network_env(self, pod_ip: str, namespace: str) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(self.shim),
            "PODNET_IP": pod_ip,
            "PODNET_HOSTS": str(self.hosts.path),
            "PODNET_NAMESPACE": namespace,
            "GRPC_DNS_RESOLVER": "native",
        }

    def pause_argv(self) -> list[str]:
        """The host argv of a pod's pause process: PID 1 of the PID namespace its containers share."""
        return [
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            "unshare",
            *_user_flags(),
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--",
            "/bin/bash",
            "-c",
            PAUSE,
        ]

    def container_argv(
        self,
        hostname: str,
        binds: Sequence[tuple[Path, str]],
        command: Sequence[str],
        shared_pid_of: int | None = None,
    ) -> list[str]:
        """The host argv that runs `command` as a container: namespaces, binds, hostname, pdeathsig.

        With `shared_pid_of` (the pause process's pid) the container joins that PID namespace
        instead of getting its own (its PID 1 is then the pause process)."""
        bind_args = [f"{src}|{dst}" for src, dst in binds]
        launch = ["/bin/sh", "-c", LAUNCHER, "launcher"]
        if shared_pid_of is None:
            return [
                "setpriv",
                "--pdeathsig",
                "KILL",
                "--",
                "unshare",
                *namespace_flags(),
                "--",
                *launch,
                "noproc",
                hostname[:63],
                *bind_args,
                "--",
                *command,
            ]
        join = ["nsenter", "-t", str(shared_pid_of), "--pid", *(["--user"] if _user_flags() else []), "--"]
        return [
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            *join,
            "unshare",
            "--fork",
            "--mount",
            "--uts",
            "--kill-child=SIGKILL",
            "--",
            *launch,
            "proc",
            hostname[:63],
            *bind_args,
            "--",
            *command,
        ]


def marker_env(runner_id: str, pod_uid: str, container: str = "") -> Mapping[str, str]:
    """Tags every process of a pod's container, so a sweep can find strays by environment."""
    return {"MOEPLANE_PODRUNNER": f"{runner_id}/{pod_uid}/{container}"}


def tagged(prefix: str) -> list[int]:
    """Pids of live processes whose MOEPLANE_PODRUNNER tag starts with `prefix`."""
    needle = f"MOEPLANE_PODRUNNER={prefix}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read():
                    continue
            with open(f"/proc/{entry}/stat") as s:
                if s.read().rsplit(") ", 1)[1][0] == "Z":
                    continue
        except (OSError, IndexError):
            continue
        found.append(int(entry))
    return found
