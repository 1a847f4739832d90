"""Queueing capacities of the pools, from the DeepSeek-R1 roofline tabulated as a profile."""

from __future__ import annotations

import math

import pytest
from moeplane.planner.perf.capacity import (
    DecodeLimit,
    decode_capacity,
    decode_groups_needed,
    decode_itl_at_load_s,
    erlang_c,
    lognormal_quantile,
    prefill_capacity,
    prefill_groups_needed,
    prefill_request_times,
    prefill_ttft_s,
)

pytestmark = pytest.mark.unit


def test_erlang_c_known_values() -> None:
    assert erlang_c(1, 0.7) == pytest.approx(0.7)  # M/M/1: P(wait) = utilization
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(10, 10.0) == 1.0 and erlang_c(4, 0.0) == 0.0
    assert erlang_c(1000, 900.0) < erlang_c(100, 90.0)  # pooling: same utilization, less waiting


def test_lognormal_quantile() -> None:
    assert lognormal_quantile(1000, 0.0, 99) == 1000
    assert lognormal_quantile(1000, 0.6, 50) < 1000 < lognormal_quantile(1000, 0.6, 99)


def test_prefill_ttft_rises_with_load_and_falls_with_groups(r1_models) -> None:
    prefill = r1_models.prefill
    ttft = [
        prefill_ttft_s(prefill, arrival_rate_per_s=r, groups=2, isl_tokens=2000, isl_cv=0.6, percentile=99)
        for r in (10, 100, 150, 190)
    ]
    assert ttft == sorted(ttft) and ttft[0] == pytest.approx(ttft[1], rel=0.05)  # light load: the own step
    assert prefill_ttft_s(prefill, arrival_rate_per_s=1000, groups=2, isl_tokens=2000) == math.inf
    assert (
        prefill_ttft_s(prefill, arrival_rate_per_s=190, groups=3, isl_tokens=2000, percentile=99) < ttft[-1]
    )
    times = prefill_request_times(prefill, 256, batch_tokens=8192)
    assert times.service_s < times.floor_s  # short prompts share a batched step


def test_prefill_capacity_is_the_most_load_meeting_the_target(r1_models) -> None:
    prefill = r1_models.prefill
    point = prefill_capacity(
        prefill, isl_tokens=2000, ttft_target_ms=1800, groups=2, isl_cv=0.6, percentile=99
    )
    assert point.feasible and 0.5 < point.max_utilization < 1.0
    rate = point.sla_input_tokens_per_s_per_group * 2 / 2000
    at = prefill_ttft_s(
        prefill, arrival_rate_per_s=rate, groups=2, isl_tokens=2000, isl_cv=0.6, percentile=99
    )
    above = prefill_ttft_s(
        prefill, arrival_rate_per_s=rate * 1.02, groups=2, isl_tokens=2000, isl_cv=0.6, percentile=99
    )
    assert at <= 1.8 < above
    tiny = prefill_capacity(prefill, isl_tokens=60000, ttft_target_ms=100, groups=1)
    assert not tiny.feasible and tiny.sla_input_tokens_per_s_per_group == 0.0


def test_prefill_groups_needed_is_minimal(r1_models) -> None:
    prefill = r1_models.prefill
    kwargs = dict(isl_tokens=2000, ttft_target_ms=1800, isl_cv=0.6, percentile=99)
    n = prefill_groups_needed(prefill, arrival_rate_per_s=700, **kwargs)
    assert n is not None and n > 1
    assert (
        prefill_ttft_s(prefill, arrival_rate_per_s=700, groups=n, isl_tokens=2000, isl_cv=0.6, percentile=99)
        <= 1.8
    )
    assert (
        prefill_ttft_s(
            prefill, arrival_rate_per_s=700, groups=n - 1, isl_tokens=2000, isl_cv=0.6, percentile=99
        )
        > 1.8
    )
    assert prefill_groups_needed(prefill, arrival_rate_per_s=0, **kwargs) == 0
    assert prefill_groups_needed(prefill, arrival_rate_per_s=10, isl_tokens=60000, ttft_target_ms=100) is None


def test_decode_capacity_meets_itl_or_fills_kv(r1_models) -> None:
    decode = r1_models.decode
    point = decode_capacity(decode, isl_tokens=2000, osl_tokens=2000, itl_target_ms=45)
    assert point.feasible and point.limit is DecodeLimit.ITL
    assert point.itl_ms == pytest.approx(45, rel=1e-3)
    assert point.batch_per_rank < point.kv_batch_per_rank
    loose = decode_capacity(decode, isl_tokens=2000, osl_tokens=2000, itl_target_ms=10_000)
    assert loose.limit is DecodeLimit.KV and loose.batch_per_rank == pytest.approx(loose.kv_batch_per_rank)
    assert not decode_capacity(decode, isl_tokens=2000, osl_tokens=2000, itl_target_ms=1).feasible
    # Long outputs stay longer: variable OSL means more context and KV per live sequence.
    varied = decode_capacity(decode, isl_tokens=2000, osl_tokens=2000, itl_target_ms=10_000, osl_cv=1.0)
    assert varied.kv_batch_per_rank < loose.kv_batch_per_rank


def test_decode_groups_and_itl_at_load_agree(r1_models) -> None:
    decode = r1_models.decode
    point = decode_capacity(decode, isl_tokens=2000, osl_tokens=2000, itl_target_ms=45)
    rate = 600.0
    n = decode_groups_needed(point, arrival_rate_per_s=rate)
    assert n is not None
    itl_n = decode_itl_at_load_s(decode, arrival_rate_per_s=rate, groups=n, isl_tokens=2000, osl_tokens=2000)
    itl_less = decode_itl_at_load_s(
        decode, arrival_rate_per_s=rate, groups=n - 1, isl_tokens=2000, osl_tokens=2000
    )
    assert itl_n * 1e3 <= 45.0 < itl_less * 1e3
    assert (
        decode_itl_at_load_s(decode, arrival_rate_per_s=1e6, groups=1, isl_tokens=2000, osl_tokens=2000)
        == math.inf
    )
