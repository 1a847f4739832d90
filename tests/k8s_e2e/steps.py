"""One numbered step: its report entry, a capacity sampler running through it, its load (if any), and
waits that explain themselves when they time out."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from tests.k8s_e2e.load import SteadyLoad
from tests.k8s_e2e.report import E2EReport, StepReport
from tests.k8s_e2e.sampler import CapacitySampler
from tests.k8s_e2e.stack import E2EStack

T = TypeVar("T")


@dataclass
class Step:
    stack: E2EStack
    entry: StepReport
    sampler: CapacitySampler
    exits: ExitStack
    loads: list[SteadyLoad] = field(default_factory=list)

    def steady_load(self, concurrency: int = 2) -> SteadyLoad:
        """Start a steady load through the frontend Service; it runs until the step ends."""
        load = SteadyLoad(self.stack.frontend_endpoint, self.stack.served_model, concurrency=concurrency)
        self.exits.enter_context(load)
        self.loads.append(load)
        return load

    def wait(self, predicate: Callable[[], T], timeout_s: float, what: str, fail_fast: bool = True) -> T:
        """Poll `predicate` until truthy. A `moeplane pool` sidecar that exits fails the wait at once
        (it never exits while serving) with its log."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if fail_fast:
                broken = self.stack.pool_sidecar_failure()
                if broken:
                    raise AssertionError(f"while waiting for {what}: {broken}\n{self.stack.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s:g}s waiting for {what}\n{self.stack.describe()}"
                )
            time.sleep(0.5)


@contextmanager
def run_step(
    report: E2EReport, name: str, stack: E2EStack, desired_groups: int | None = None
) -> Iterator[Step]:
    entry = report.step(name)
    started = time.monotonic()
    sampler = CapacitySampler(stack.redis_url, stack.keys, stack.provisioned_groups)
    try:
        entry.desired_groups = desired_groups if desired_groups is not None else stack.desired_groups()
    except AssertionError:  # no deployment yet (step 1)
        entry.desired_groups = 0
    with ExitStack() as exits:
        exits.enter_context(sampler)
        current = Step(stack, entry, sampler, exits)
        try:
            yield current
            exits.close()  # stop the loads and the sampler before judging them
            entry.outcome = "passed"
        except BaseException as exc:
            entry.outcome = "failed"
            entry.detail = f"{type(exc).__name__}: {exc}"[:3000]
            raise
        finally:
            exits.close()
            entry.seconds = round(time.monotonic() - started, 1)
            entry.min_serving_groups = sampler.min_serving
            entry.max_groups = sampler.max_provisioned
            entry.ok = sum(load.ok for load in current.loads)
            entry.failed = sum(load.failed for load in current.loads)
            for load in current.loads:
                entry.notes.extend(load.failure_timeline())


def require_serving(step: Step, timeout_s: float = 20.0) -> None:
    """A step that needs a serving deployment first (what step 2 establishes)."""
    stack = step.stack
    want = stack.desired_groups()
    step.wait(
        lambda: sum(len(g) for g in stack.serving().values()) >= want,
        timeout_s,
        f"the deployment to serve {want} EP groups (the state step 2 reaches) before this step",
    )
