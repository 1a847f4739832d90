"""The hang timeout adapts to how fast healthy ranks answer (workers/supervisor/liveness.py)."""

from __future__ import annotations

import pytest
from moeplane.workers.supervisor.liveness import LATENCY_FACTOR, hang_timeout_s


@pytest.mark.unit
def test_a_quiet_host_keeps_the_configured_timeout() -> None:
    assert hang_timeout_s(1.4, []) == 1.4
    assert hang_timeout_s(1.4, [0.01, 0.25, 0.3]) == 1.4  # answers within a poll interval or so


@pytest.mark.unit
def test_slow_healthy_answers_stretch_it() -> None:
    # Healthy ranks took up to 1.1 s to answer (an overloaded host): a 1.4 s silence is not a hang.
    assert hang_timeout_s(1.4, [0.2, 1.1, 0.5]) == pytest.approx(LATENCY_FACTOR * 1.1)
    assert hang_timeout_s(1.4, [0.2, 1.1, 0.5]) > 1.4
