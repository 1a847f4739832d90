"""Pure parts of the planner service: request records to a tick, and the SLA tuning form."""

from __future__ import annotations

import pytest
import yaml
from moeplane.api.enums import Predictor, Role
from moeplane.planner.observe import Outcome, PoolGroups, WindowBy, outcome, tick_from, window_stats
from moeplane.planner.service.tuning import TuningError, parse_tuning, proposed_spec

from moeplane.bus.registry import GroupState, WorkerGroup
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


def test_what_users_experience_is_what_is_observed() -> None:
    """OSL from completed requests only; refusals are demand and misses, not OSL 0; a client
    that went away is not an OSL either; time queued is in TTFT; prompts whose prefill alone
    exceeds the target leave the TTFT percentile; windows can be by end time."""
    ok = [
        RequestRecord(
            request_id=f"ok{i}",
            model="m",
            status=RequestStatus.OK,
            isl_tokens=100,
            osl_tokens=200,
            queue_ms=900.0,
            ttft_ms=1200.0,
            itl_ms=150.0,
            e2e_ms=31_000.0,
            arrived_at_s=100.0 + i,
            http_status=200,
            cached_tokens=40,
        )
        for i in range(7)
    ]
    refused = [
        RequestRecord(
            request_id=f"no{i}",
            model="m",
            status=RequestStatus.REJECTED,
            isl_tokens=100,
            osl_tokens=0,
            e2e_ms=5.0,
            arrived_at_s=100.5 + i,
            http_status=503,
        )
        for i in range(3)
    ]
    gone = RequestRecord(
        request_id="gone",
        model="m",
        status=RequestStatus.CANCELLED,
        isl_tokens=100,
        osl_tokens=3,
        ttft_ms=800.0,
        e2e_ms=2_000.0,
        arrived_at_s=101.0,
    )
    bad = RequestRecord(
        request_id="bad",
        model="m",
        status=RequestStatus.REJECTED,
        isl_tokens=0,
        osl_tokens=0,
        e2e_ms=1.0,
        arrived_at_s=102.0,
        http_status=400,
    )
    slow = RequestRecord(
        request_id="slow",
        model="m",
        status=RequestStatus.OK,
        isl_tokens=90_000,
        osl_tokens=200,
        queue_ms=0.0,
        ttft_ms=40_000.0,
        itl_ms=50.0,
        e2e_ms=50_000.0,
        arrived_at_s=103.0,
    )
    records = [*ok, *refused, gone, bad, slow]
    s = window_stats(records, 100.0, 110.0, percentile=90, ttft_target_ms=30_000.0)
    assert s.requests == 13
    assert s.load.osl_tokens_mean == 200.0  # completed only: no 0 from refusals, no 3 from the disconnect
    assert s.load.rejected_fraction == pytest.approx(3 / 13)  # the 400 is not a capacity refusal
    assert dict(s.outcomes) == {
        Outcome.OK: 8,
        Outcome.NO_CAPACITY: 3,
        Outcome.CANCELLED: 1,
        Outcome.CLIENT_ERROR: 1,
    }
    assert s.ttft_at_sla_ms is not None and s.ttft_at_sla_ms < 30_000  # the 90k-token prompt is left out
    assert s.ttft_p50_ms == pytest.approx(1200.0)  # queue time is in TTFT
    assert s.load.cached_fraction == pytest.approx(7 * 40 / (11 * 100 + 90_000))
    assert s.e2e_p50_ms == pytest.approx(31_000.0) and s.e2e_p99_ms is not None
    # By end time: the refusals ended at once, the completed requests 31 s after they came.
    ended = window_stats(records, 100.0, 110.0, by=WindowBy.FINISH)
    assert ended.requests == 5  # 3 refusals, the 400, the disconnect
    # Unknown HTTP status: a rejection counts towards capacity refusals (the planner errs up).
    legacy = RequestRecord(
        request_id="old",
        model="m",
        status=RequestStatus.REJECTED,
        isl_tokens=10,
        osl_tokens=0,
        e2e_ms=1.0,
        arrived_at_s=100.0,
    )
    assert outcome(legacy) is Outcome.REJECTED
    assert window_stats([legacy], 99.0, 101.0).load.rejected_fraction == 1.0


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
    # The pool reports 2 ready, the registry has one live prefill group: one serves.
    assert (tick.prefill.ready_groups, tick.prefill.starting_groups, tick.prefill.queued_requests) == (
        1,
        2,
        3,
    )
    assert tick.decode.running_requests == 8
    assert tick.decode.inflight_kv_tokens == 60 * 16
    assert tick.decode.utilization == pytest.approx(60 / 200)
    assert tick.prefill.latency_ms == stats.ttft_at_sla_ms
    # Requests that ended, plus those in flight now that were not before: arrivals.
    grown = tick_from(stats, PoolGroups(3, 2), PoolGroups(2, 2), workers, in_flight_growth=10)
    assert grown.load.arrival_rate_per_s == pytest.approx((5 + 10) / 10)
    # Only live groups serve; a restarting one unsettles the pool (no shrinking).
    sick = [*workers[:2], workers[2].model_copy(update={"state": GroupState.RESTARTING})]
    t = tick_from(stats, PoolGroups(3, 3), PoolGroups(2, 2), sick)
    assert t.decode.ready_groups == 1 and t.decode.unsettled and not t.prefill.unsettled
    rolling = tick_from(stats, PoolGroups(3, 3), PoolGroups(2, 2, rolling=True), workers)
    assert rolling.decode.unsettled


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
