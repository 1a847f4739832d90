"""The tier's JSON report (written when MOEPLANE_E2E_REPORT names a file).

One entry per numbered step of issue 16, in this shape:
`{"steps": [{"name", "ok", "failed", "min_serving_groups", "desired_groups", "max_groups", "seconds"}],
  "answers_match_embedded": bool}` (extra keys: `outcome` passed/failed, the failure's `detail`, and
`notes`, e.g. the containers that ignored SIGTERM until the grace period ended).

`desired_groups` is the steady desired count of serving EP groups (both pools) during the step: for
a scale step the count before and after it, so `min_serving_groups >= desired_groups` means capacity
never dipped, and `max_groups - desired_groups` is the surge used.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_ENV = "MOEPLANE_E2E_REPORT"


@dataclass
class StepReport:
    name: str
    ok: int = 0
    failed: int = 0
    min_serving_groups: int = 0
    desired_groups: int = 0
    max_groups: int = 0
    seconds: float = 0.0
    outcome: str = "not run"
    detail: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class E2EReport:
    steps: list[StepReport] = field(default_factory=list)
    answers_match_embedded: bool = False

    def step(self, name: str) -> StepReport:
        entry = StepReport(name)
        self.steps.append(entry)
        return entry

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": [asdict(s) for s in self.steps],
            "answers_match_embedded": self.answers_match_embedded,
        }

    def write(self, path: str | None = None) -> Path | None:
        target = path or os.environ.get(REPORT_ENV)
        if not target:
            return None
        out = Path(target)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return out
