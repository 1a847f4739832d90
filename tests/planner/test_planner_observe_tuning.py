"""Pure parts of the planner service: request records to a tick, and the SLA tuning form."""

from __future__ import annotations

import pytest
import yaml
from moeplane.api.enums import Predictor, Role
from moeplane.planner.observe import PoolGroups, tick_from, window_stats
from moeplane.planner.service.tuning import TuningError, parse_tuning, proposed_spec

from moeplane.bus.registry import WorkerGroup
from moeplane.bus.request_metrics import RequestRecord, RequestStatus
from tests.planner.conftest import EXAMPLE

pytestmark = pytest.mark.unit


def rec(i: int, at_s: float, status: RequestStatus = RequestStatus.OK, ttft: float = 100.0) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{i}",
        model="m",
        status=status,
        isl_tokens=1000 + i,
        osl_tokens=100,
        ttft_ms=ttft if status is RequestStatus.OK else None,
        itl_ms=20.0 + i % 5,
        e2e_ms=1.0,
        arrived_at_s=at_s,
    )


def test_window_stats_counts_load_and_percentiles_inside_the_window() -> None:
    records = [rec(i, 1000.0 + i * 0.5, ttft=float(i)) for i in range(40)]  # 20 s of 2 req/s
    records.append(rec(99, 1005.0, RequestStatus.REJECTED))
    records.append(rec(100, 999.0))  # before the window
    s = window_stats(records, 1000.0, 1020.0, percentile=90)
    assert s.requests == 41 and s.failed == 1
    assert s.load.arrival_rate_per_s == pytest.approx(41 / 20)
    # Five-second bins: 10 served + 1 rejected in [1005, 1010).
    assert s.load.peak_arrival_rate_per_s == pytest.approx(11 / 5)
    assert s.ttft_p50_ms == pytest.approx(19.5)
    assert s.ttft_at_sla_ms == s.ttft_p90_ms == pytest.approx(35.1)
    empty = window_stats(records, 2000.0, 2010.0)
    assert empty.requests == 0 and empty.ttft_p50_ms is None and empty.load.arrival_rate_per_s == 0
    with pytest.raises(ValueError, match=r"t1_s > t0_s"):
        window_stats(records, 5.0, 5.0)


def test_tick_takes_queues_and_kv_use_from_the_registry() -> None:
    def group(gid: str, role: Role, queue: int, free: int) -> WorkerGroup:
        return WorkerGroup(
            group_id=gid,
            role=role,
            address="127.0.0.1:1",
            model="m",
            ep_size=2,
            block_size_tokens=16,
            kv_blocks_total=100,
            kv_blocks_free=free,
            max_blocks_per_rank=free // 2,
            queue_depth=queue,
            heartbeat_at_s=1.0,
        )

    workers = [
        group("p0", Role.PREFILL, 3, 100),
        group("d0", Role.DECODE, 7, 40),
        group("d1", Role.DECODE, 1, 100),
    ]
    stats = window_stats([rec(i, 10.0 + i) for i in range(5)], 10.0, 20.0)
    tick = tick_from(stats, PoolGroups(desired=3, ready=2), PoolGroups(desired=2, ready=2), workers)
    assert tick.at_s == 20.0
    assert (tick.prefill.ready_groups, tick.prefill.starting_groups, tick.prefill.queued_requests) == (
        2,
        1,
        3,
    )
    assert tick.decode.running_requests == 8
    assert tick.decode.inflight_kv_tokens == 60 * 16
    assert tick.decode.utilization == pytest.approx(60 / 200)
    assert tick.prefill.latency_ms == stats.ttft_at_sla_ms


def test_tuning_parses_the_form_and_names_the_bad_field() -> None:
    t = parse_tuning({"ttftMs": 800, "itlMs": "", "predictor": "kalman", "decodeMaxReplicas": 6})
    assert t.predictor is Predictor.KALMAN
    assert t.spec_patch() == {
        "sla": {"ttftMs": 800},
        "planner": {"predictor": "kalman"},
        "decode": {"maxReplicas": 6},
    }
    for body, field in (
        ({"ttftMs": -1}, "ttftMs"),
        ({"percentile": 100}, "percentile"),
        ({"predictor": "magic"}, "predictor"),
        ({"gpuBudgetNodes": 0}, "gpuBudgetNodes"),
        ({"ttftMs": 5, "bogus": 1}, "bogus"),
        ([1, 2], "body"),
    ):
        with pytest.raises(TuningError) as err:
            parse_tuning(body)
        assert err.value.field == field, body


def test_proposed_spec_is_validated_like_the_api() -> None:
    obj = yaml.safe_load(EXAMPLE.read_text())
    spec = proposed_spec(obj, parse_tuning({"itlMs": 40, "prefillMaxReplicas": 6}))
    assert spec.sla.itl_ms == 40 and spec.prefill.max_replicas == 6 and spec.sla.ttft_ms == 2000
    with pytest.raises(TuningError) as err:
        proposed_spec(obj, parse_tuning({"decodeMinReplicas": 9}))  # above maxReplicas 4
    assert err.value.field == "decodeMinReplicas"
    assert obj["spec"]["sla"]["itlMs"] == 50  # the CR itself is untouched
