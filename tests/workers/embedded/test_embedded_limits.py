"""The runtime document's serving limits reach `moeplane up`'s frontend (pure: no stack started)."""

from __future__ import annotations

import pytest
from moeplane.workers.embedded.plan import DEFAULT_MANIFEST, load_manifest, plan_from_deployment
from moeplane.workers.embedded.stack import EmbeddedStack, StackOptions
from moeplane.workers.runtime import serving_limits

pytestmark = pytest.mark.unit


def _plan(**serving: object):
    dep = load_manifest(DEFAULT_MANIFEST)
    spec = dep.spec.model_copy(update={"serving": dep.spec.serving.model_copy(update=serving)})
    return plan_from_deployment(dep.model_copy(update={"spec": spec}))


def test_spec_serving_sizes_the_embedded_frontends_queue_and_timeouts() -> None:
    plan = _plan(max_queued_requests=3, queue_timeout_seconds=7, request_timeout_seconds=90)
    limits = EmbeddedStack(plan, StackOptions(request_timeout_s=90)).limits
    assert (limits.max_queued_requests, limits.queue_timeout_s, limits.request_timeout_s) == (3, 7, 90)
    assert (limits.max_num_seqs, limits.max_num_batched_tokens) == (64, 512)  # tiny-cpu.yaml's
    assert limits.max_model_len == plan.max_model_len


def test_a_shorter_request_timeout_flag_caps_the_queue_wait() -> None:
    serving = _plan(queue_timeout_seconds=30, request_timeout_seconds=300).serving
    limits = serving_limits(serving, request_timeout_s=10)
    assert (limits.queue_timeout_s, limits.request_timeout_s) == (10, 10)
    assert serving_limits(serving).request_timeout_s == 300
