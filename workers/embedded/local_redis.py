"""A private, real redis-server that moeplane starts and stops itself (embedded mode and tests)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
from moeplane.workers.net import free_port


class RedisUnavailable(RuntimeError):
    """redis-server is missing or did not come up."""


class LocalRedis:
    """redis-server bound to 127.0.0.1 on its own port, with no persistence.

    `restart()` keeps the port, so clients see an outage rather than a move.
    """

    def __init__(self, port: int = 0, password: str | None = None, binary: str = "redis-server") -> None:
        self.port = port or free_port()
        self.password = password
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="moeplane-redis-")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        exe = shutil.which(self.binary)
        if exe is None:
            raise RedisUnavailable(
                f"{self.binary!r} is not on PATH; install it (Debian: apt-get install redis-server)"
            )
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self._dir, "--logfile", str(Path(self._dir) / "redis.log")]
        if self.password:
            # Passed on stdin-free argv is visible in `ps`; acceptable for a private local server,
            # but never logged by moeplane.
            args += ["--requirepass", self.password]
        # A session of its own: Ctrl-C in a terminal must not reach redis-server before moeplane has
        # deregistered its groups; moeplane stops it last.
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RedisUnavailable(f"redis-server exited with {self._proc.returncode}; see {self._dir}")
            try:
                if client.ping():
                    return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer PING within {timeout_s}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()
