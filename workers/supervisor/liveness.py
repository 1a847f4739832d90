"""`LivenessProbe`: is every rank of every watched group alive and answering? Independent of the
groups' step loops.

Each rank answers `RankWorker.ping` on a concurrency group of its own, so the answer does not wait
for a step, a stats call or a weight move. Every `interval_s` the probe sends a ping to each rank
that has none outstanding and polls the outstanding ones:
- a ping that fails with Ray's actor error: the rank died (kill -9, OOM, a node lost);
- a ping unanswered for `timeout_s` while another watched rank answered a ping sent after it: the
  rank hangs (SIGSTOP, a wedged driver, a dead host). Requiring a peer's answer keeps a machine
  that is merely overloaded (every rank slow alike) from restarting healthy groups; a rank with no
  watched peer, or silent for `10 * timeout_s`, is declared hung on time alone.
Either verdict is delivered once, on the event loop, to the group's callback, and the group is no
longer watched (its supervisor restarts it with fresh ranks, watched anew).

The probe runs on a thread and polls with `ray.wait(timeout=0)`, so a busy event loop (the
embedded stack serves HTTP on it) can neither delay a verdict nor fake a hang. Detection takes at
most `timeout_s + 2 * interval_s` for a hang, `interval_s` for a death (a step in flight reports a
death sooner).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

log = logging.getLogger(__name__)

Verdict = Callable[[str], None]


class LivenessError(ValueError):
    pass


@dataclass
class _Rank:
    actor: Any
    ping: Any = None  # the outstanding ObjectRef
    sent_at_s: float = 0.0  # monotonic, of the outstanding ping
    answered_sent_at_s: float = -1.0  # monotonic send time of the last ping it answered


@dataclass
class _Watched:
    ranks: list[_Rank]
    on_verdict: Verdict
    loop: asyncio.AbstractEventLoop
    done: bool = field(default=False)


class LivenessProbe:
    def __init__(self, interval_s: float = 0.25, timeout_s: float = 1.5, name: str = "liveness") -> None:
        if not 0 < interval_s < timeout_s:
            raise LivenessError(
                f"liveness interval_s ({interval_s}) must be > 0 and below timeout_s ({timeout_s})"
            )
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.num_rounds = 0
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"moeplane-{name}", daemon=True)
        self._thread.start()

    def watch(self, key: str, actors: list[Any], on_verdict: Verdict) -> None:
        """Probe `actors` (a group's ranks, in rank order) until a verdict or `unwatch(key)`.
        Call on the event loop that should receive the verdict."""
        entry = _Watched([_Rank(a) for a in actors], on_verdict, asyncio.get_running_loop())
        with self._lock:
            self._watched[key] = entry

    def unwatch(self, key: str) -> None:
        with self._lock:
            entry = self._watched.pop(key, None)
        if entry is not None:
            entry.done = True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            self._watched.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                watched = list(self._watched.items())
            verdicts: dict[str, tuple[_Watched, str]] = {}
            for key, entry in watched:
                try:
                    died = self._poll(entry)
                except Exception as exc:  # never let the probe thread die
                    log.warning("liveness probe of %s: %s", key, exc)
                    continue
                if died is not None:
                    verdicts[key] = (entry, died)
            every = [r for _, entry in watched for r in entry.ranks]
            now = time.monotonic()
            for key, entry in watched:
                if key not in verdicts and (hung := self._hung(entry, every, now)) is not None:
                    verdicts[key] = (entry, hung)
            for key, (entry, reason) in verdicts.items():
                self._deliver(key, entry, reason)
            self.num_rounds += 1

    def _poll(self, entry: _Watched) -> str | None:
        """Send the pings due and collect the answers; a death's reason, if any."""
        now = time.monotonic()
        for r in entry.ranks:
            if r.ping is None:
                r.ping, r.sent_at_s = r.actor.ping.remote(), now
        refs = [r.ping for r in entry.ranks]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
        ready_set = set(ready)
        for rank, r in enumerate(entry.ranks):
            if r.ping in ready_set:
                try:
                    ray.get(r.ping, timeout=0)
                except ray.exceptions.RayActorError as exc:
                    return f"rank {rank} died ({type(exc).__name__})"
                except Exception as exc:  # answered, but with an error: the rank is still there
                    log.debug("rank %d ping answered with %s", rank, exc)
                r.ping, r.answered_sent_at_s = None, r.sent_at_s
        return None

    def _hung(self, entry: _Watched, every: list[_Rank], now: float) -> str | None:
        for rank, r in enumerate(entry.ranks):
            if r.ping is None or now - r.sent_at_s <= self.timeout_s:
                continue
            peers = [q for q in every if q is not r]
            answered = any(q.answered_sent_at_s > r.sent_at_s for q in peers)
            if answered or not peers or now - r.sent_at_s > 10 * self.timeout_s:
                return f"rank {rank} hung (no liveness answer in {self.timeout_s:g} s)"
        return None

    def _deliver(self, key: str, entry: _Watched, reason: str) -> None:
        with self._lock:
            if self._watched.get(key) is entry:
                del self._watched[key]
        if entry.done:
            return
        entry.done = True
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            entry.loop.call_soon_threadsafe(entry.on_verdict, reason)
