"""Domain errors of the performance models."""

from __future__ import annotations


class PerfModelError(ValueError):
    """A performance model that cannot be built or asked: names the field and the numbers."""
