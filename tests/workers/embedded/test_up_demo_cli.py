"""`moeplane up` and `moeplane demo` as a user runs them: real subprocesses, real Ray, real Redis.

`up` prints its URLs, serves, listens on loopback only (every socket of every process it started,
Ray's GCS, raylet, workers and agents included), and on Ctrl-C (SIGINT) stops with exit 0 leaving
no process behind; `demo` drives its load and prints the SLA report with no errors. Every process
either command started (Ray's, redis-server) is collected while it runs and must be gone when it
returns.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 600
WAIT_S = 300  # bound on each answer and exit: generous, a busy machine is slow


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pids: set[int]) -> list[str]:
    """The pids still running (not zombies), with their command lines."""
    left = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            left.append(f"{pid}: {cmd}")
    return left


def listening_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket in LISTEN state that one of `pids` holds, from
    /proc/net/tcp{,6} and the processes' file descriptors."""
    owner: dict[int, int] = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[int(target[8:-1])] = pid
    out = []
    for family, table in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or int(fields[9]) not in owner:  # 0A: LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            words = [int(hex_addr[i : i + 8], 16) for i in range(0, len(hex_addr), 8)]
            address = socket.inet_ntop(family, b"".join(struct.pack("<I", w) for w in words))
            out.append((owner[int(fields[9])], address, int(hex_port, 16)))
    return out


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class Watch:
    """Collects the descendants of a process every 0.5 s while it runs."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.seen = proc, set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self.proc.poll() is None:
            self.seen |= descendants(self.proc.pid)
            time.sleep(0.5)


def stop(proc: subprocess.Popen[str], watch: Watch) -> None:
    """After a failed assertion: stop the command as Ctrl-C would, else kill it and every process
    it started (redis-server runs in a session of its own, so it would outlive a plain kill)."""
    if proc.poll() is not None:
        return  # it exited by itself: whatever it left behind is the test's finding
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for line in alive(watch.seen):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


def moeplane(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MOEPLANE_DASHBOARD_TOKEN", None)  # so `up` makes one and prints it
    return subprocess.Popen(
        [sys.executable, "-m", "moeplane", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env,
    )


def test_up_serves_then_ctrl_c_stops_everything() -> None:
    proc = moeplane("up", "--port", "0", "--max-model-len", "256", "--api-key", "up-key")
    watch = Watch(proc)
    output: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        url = dashboard = None
        for line in proc.stdout:
            output.append(line)
            if m := re.match(r"\s+OpenAI API\s+(http://127\.0\.0\.1:\d+)/v1", line):
                url = m.group(1)
            if m := re.match(r"\s+dashboard\s+(http://127\.0\.0\.1:\d+)/dashboard", line):
                dashboard = m.group(1)
            if "Press Ctrl-C to stop." in line or time.monotonic() > deadline:
                break
        assert url is not None, "".join(output)
        assert re.search(r"prefill group prefill-0\s+gRPC 127\.0\.0\.1:\d+", "".join(output))
        assert "redis        redis://127.0.0.1:" in "".join(output)
        with urllib.request.urlopen(url + "/health", timeout=WAIT_S) as resp:
            assert json.load(resp)["groups"] == {"prefill": 1, "decode": 1}
        # The planner runs beside the stack, with its dashboard and a token printed once.
        assert dashboard is not None, "".join(output)
        assert len(re.findall(r"dashboard token \(for Apply; printed once\): \S+", "".join(output))) == 1
        with urllib.request.urlopen(dashboard + "/api/deployments", timeout=WAIT_S) as resp:
            planned = json.load(resp)["deployments"]
        assert [(d["namespace"], d["name"]) for d in planned] == [("default", "tiny")]
        with urllib.request.urlopen(dashboard + "/dashboard", timeout=WAIT_S) as resp:
            assert resp.status == 200
        body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 4}).encode()
        headers = {"Content-Type": "application/json"}
        with pytest.raises(urllib.error.HTTPError) as denied:  # --api-key: the OpenAI API needs it
            urllib.request.urlopen(
                urllib.request.Request(url + "/v1/completions", data=body, headers=headers), timeout=WAIT_S
            )
        assert denied.value.code == 401
        req = urllib.request.Request(
            url + "/v1/completions", data=body, headers={**headers, "Authorization": "Bearer up-key"}
        )
        with urllib.request.urlopen(req, timeout=WAIT_S) as resp:
            assert json.load(resp)["usage"]["completion_tokens"] >= 1
        started = watch.seen | descendants(proc.pid)
        assert any("redis-server" in c for c in alive(started)) and any("raylet" in c for c in alive(started))
        # Loopback only: no process of the stack listens on a wildcard or another interface.
        sockets = listening_sockets(started | {proc.pid})
        owners = {pid for pid, _, _ in sockets}
        assert len(sockets) >= 8 and any("gcs_server" in c for c in alive(owners)), sockets
        exposed = [(pid, addr, port) for pid, addr, port in sockets if not is_loopback(addr)]
        assert exposed == [], [(alive({pid}), addr, port) for pid, addr, port in exposed]

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=WAIT_S)
        output.append(rest)
    finally:
        stop(proc, watch)
    assert proc.returncode == 0, "".join(output)
    assert "moeplane: stopped" in "".join(output)
    deadline = time.monotonic() + WAIT_S  # reaped processes vanish from /proc, late on a busy machine
    while alive(watch.seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive(watch.seen) == []


def test_demo_prints_the_sla_report_without_errors(tmp_path: Path) -> None:
    out_json = tmp_path / "demo.json"
    proc = moeplane(
        "demo", "--requests", "8", "--rate", "4", "--max-model-len", "512", "--json", str(out_json)
    )
    watch = Watch(proc)
    try:
        output, _ = proc.communicate(timeout=START_TIMEOUT_S + 120)
    finally:
        stop(proc, watch)
    assert proc.returncode == 0, output
    assert re.search(r"demo \[#+\] 8/8  0 errors", output)  # the progress bar
    row = r"^TTFT ms\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+1000  (met|MISSED)"
    assert re.search(row, output, re.M), output
    assert re.search(r"^ITL ms\s+[\d.]+", output, re.M)
    assert "requests:   8/8 ok, 0 errors" in output
    report = json.loads(out_json.read_text())
    assert report["num_ok"] == 8 and report["output_tokens_per_s"] > 0 and report["ttft"]["p99_ms"] > 0
    assert len(watch.seen) >= 3, "the watch saw the stack's processes (redis-server, Ray's)"
    deadline = time.monotonic() + WAIT_S  # reaped processes vanish from /proc, late on a busy machine
    while alive(watch.seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive(watch.seen) == []
