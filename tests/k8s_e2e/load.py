"""A steady load through the frontend Service, with every request's outcome kept.

Each request goes to a ready endpoint of the frontend Service chosen when it starts (what a client
of the Service gets from kube-proxy), with the official `openai` client and no retries, so a
failure is counted, not hidden. `concurrency` workers each send a request, wait `pause_s`, repeat.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import openai


@dataclass(frozen=True)
class Outcome:
    started_at: float
    finished_at: float
    ok: bool
    endpoint: str
    error: str = ""


@dataclass
class SteadyLoad:
    """Use as `with SteadyLoad(endpoint, model) as load: ...`; `load.outcomes` after it."""

    endpoint: Callable[[], str | None]  # a ready frontend address (host:port), or None
    model: str
    concurrency: int = 2
    max_tokens: int = 8
    pause_s: float = 0.2
    timeout_s: float = 60.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> SteadyLoad:
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._worker, args=(i,), name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 10)

    def _worker(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            address = self.endpoint()
            started = time.time()
            if address is None:
                self._record(Outcome(started, started, False, "", "no ready frontend endpoint"))
                self._stop.wait(self.pause_s)
                continue
            client = openai.OpenAI(
                base_url=f"http://{address}/v1", api_key="e2e", timeout=self.timeout_s, max_retries=0
            )
            try:
                answer = client.completions.create(
                    model=self.model, prompt=f"load {index} {n}", max_tokens=self.max_tokens, temperature=0
                )
                ok = bool(answer.choices) and answer.choices[0].finish_reason in ("length", "stop")
                self._record(Outcome(started, time.time(), ok, address, "" if ok else "no choice"))
            except Exception as exc:  # every failure is an outcome
                self._record(Outcome(started, time.time(), False, address, f"{type(exc).__name__}: {exc}"))
            finally:
                client.close()
            self._stop.wait(self.pause_s)

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    @property
    def ok(self) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.ok)

    @property
    def failed(self) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if not o.ok)

    def failure_timeline(self, limit: int = 10) -> list[str]:
        """Failures grouped by (endpoint, error), in order of first sighting: when each kind began
        and ended and how often, so a report shows which phase of a step lost requests."""
        with self._lock:
            failed = [o for o in self.outcomes if not o.ok]
        kinds: dict[tuple[str, str], list[Outcome]] = {}
        for o in failed:
            kinds.setdefault((o.endpoint, o.error[:160]), []).append(o)

        def hms(t: float) -> str:
            return time.strftime("%H:%M:%S", time.localtime(t))

        return [
            f"{len(os)} failed {hms(os[0].started_at)}-{hms(os[-1].finished_at)} {ep or '-'}: {err}"
            for (ep, err), os in list(kinds.items())[:limit]
        ]

    def failures(self, limit: int = 5) -> list[str]:
        with self._lock:
            return [f"{o.endpoint}: {o.error}" for o in self.outcomes if not o.ok][:limit]
