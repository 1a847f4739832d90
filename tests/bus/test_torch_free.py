"""The planner service, its dashboard and the bus import without torch or the workers package."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

MODULES = [
    "moeplane.bus.keys",
    "moeplane.bus.registry",
    "moeplane.bus.request_metrics",
    "moeplane.bus.eplb",
    "moeplane.bus.redis_client",
    "moeplane.planner.adapters",
    "moeplane.planner.cli",
    "moeplane.planner.core",
    "moeplane.planner.correction",
    "moeplane.planner.embedded",
    "moeplane.planner.forecast",
    "moeplane.planner.kube",
    "moeplane.planner.layout_cmd",
    "moeplane.planner.layouts",
    "moeplane.planner.observe",
    "moeplane.planner.service.deployment",
    "moeplane.planner.service.expert_load",
    "moeplane.planner.service.main",
    "moeplane.planner.service.app",
    "moeplane.planner.service.views",
    "moeplane.planner.service.whatif",
]

_PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "moeplane.workers")))
print(",".join(heavy))
"""


def test_planner_dashboard_and_bus_import_without_torch() -> None:
    # A fresh interpreter: this test process may have imported torch already.
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *MODULES], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", f"torch-free modules pulled in: {out.stdout.strip()}"
