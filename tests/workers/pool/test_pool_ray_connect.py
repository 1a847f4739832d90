"""`moeplane pool` waits for its pod's Ray head: the pure retry loop (injected clock, sleep and
connect function) and the real command against a loopback port nothing listens on."""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import pytest
from moeplane.api.enums import Role
from moeplane.api.runtime import resolve_runtime
from moeplane.operator.builders.configmaps import engine_json
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest
from moeplane.workers.pool.args import add_arguments
from moeplane.workers.pool.connect import Backoff, ConnectTimeout, connect_with_backoff
from moeplane.workers.pool.main import run

pytestmark = pytest.mark.unit


class FakeTime:
    """A clock that only `sleep` moves, and a log of the pauses."""

    def __init__(self) -> None:
        self.now_s = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds


def flaky(failures: int, error: type[BaseException] = ConnectionError):
    """A connect function that fails `failures` times, then returns how many calls it took."""
    calls = {"n": 0}

    def connect() -> int:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise error(f"no head yet (call {calls['n']})")
        return calls["n"]

    return connect


def test_retries_with_exponential_backoff_until_the_head_is_up() -> None:
    t, said = FakeTime(), []
    result = connect_with_backoff(
        flaky(5), "the Ray head at auto", Backoff(120, first_s=0.5, max_s=4), said.append, clock=t.clock,
        sleep=t.sleep,
    )
    assert result == 6
    assert t.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0]  # doubling, capped at max_s
    assert len(said) == 5 and said[0] == (
        "waiting for the Ray head at auto (ConnectionError: no head yet (call 1)); "
        "attempt 2 in 0.5 s, 120 s left"
    )


def test_gives_up_at_the_deadline_with_the_last_error() -> None:
    t = FakeTime()
    with pytest.raises(ConnectTimeout) as err:
        connect_with_backoff(flaky(10**6), "the Ray head at auto", Backoff(10, first_s=1, max_s=4),
                             clock=t.clock, sleep=t.sleep)
    assert t.now_s - 100.0 == pytest.approx(10.0)  # the last pause is cut to the deadline
    assert t.sleeps == [1, 2, 4, 3]
    assert str(err.value) == (
        "the Ray head at auto did not come up within 10 s (5 attempts; last error: "
        "ConnectionError: no head yet (call 5))"
    )


def test_an_error_that_is_not_a_peer_starting_is_not_retried() -> None:
    t = FakeTime()
    with pytest.raises(RuntimeError, match="call 1"):
        connect_with_backoff(flaky(3, RuntimeError), "x", Backoff(60), clock=t.clock, sleep=t.sleep)
    assert t.sleeps == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"timeout_s": 0}, "timeout_s must be > 0"), ({"timeout_s": 5, "first_s": 3, "max_s": 2}, "first_s"),
     ({"timeout_s": 5, "factor": 0.5}, "factor must be >= 1")],
)
def test_backoff_refuses_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_moeplane_pool_exits_1_when_no_head_comes_up(tmp_path: Path, monkeypatch, capsys) -> None:
    document = resolve_runtime(load_manifest(DEFAULT_MANIFEST), namespace="ns1")
    (tmp_path / "engine.json").write_text(engine_json(document))
    layout = json.dumps(document.pool(Role.DECODE).to_wire())
    for var, value in {"MOEPLANE_ENGINE_CONFIG": str(tmp_path / "engine.json"),
                       "MOEPLANE_POOL_LAYOUT": layout, "MOEPLANE_ROLE": "decode",
                       "MOEPLANE_REDIS_URL": "redis://127.0.0.1:1/0"}.items():
        monkeypatch.setenv(var, value)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    address = f"127.0.0.1:{free_port()}"
    # That the wait ends at its deadline is the pure loop's (FakeTime, above); here, what it says.
    assert run(parser.parse_args(["--ray-address", address, "--ray-connect-timeout", "1.5"])) == 1
    out, err = capsys.readouterr()
    assert f"moeplane pool: waiting for the Ray head at {address} (ConnectionRefusedError" in out
    assert f"moeplane pool: the Ray head at {address} did not come up within 1.5 s (" in err
    assert run(parser.parse_args(["--ray-connect-timeout", "0"])) == 1
    assert "--ray-connect-timeout must be > 0 seconds, got 0.0" in capsys.readouterr().err
