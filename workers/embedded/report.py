"""The SLA report of a load run (pure): TTFT and ITL percentiles against the targets, throughput, errors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from moeplane.api.spec import SlaSpec
from moeplane.workers.embedded.loadgen import Result

PERCENTILES = (50.0, 90.0, 99.0)


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    at_sla_ms: float  # at the SLA's own percentile
    target_ms: float

    @property
    def met(self) -> bool:
        return self.at_sla_ms <= self.target_ms


@dataclass(frozen=True)
class SlaReport:
    num_requests: int
    num_ok: int
    errors: dict[str, int]  # message -> count
    duration_s: float
    input_tokens_per_s: float
    output_tokens_per_s: float
    sla_percentile: float
    ttft: Latency | None
    itl: Latency | None

    @property
    def num_errors(self) -> int:
        return self.num_requests - self.num_ok

    @property
    def sla_met(self) -> bool:
        return (self.ttft is not None and self.ttft.met and self.num_errors == 0
                and (self.itl is None or self.itl.met))

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["num_errors"] = self.num_errors
        out["sla_met"] = self.sla_met
        return out


def _latency(values: Sequence[float], percentile: float, target_ms: float) -> Latency | None:
    if not values:
        return None
    p50, p90, p99, at = np.percentile(np.asarray(values, dtype=np.float64), [*PERCENTILES, percentile])
    return Latency(float(p50), float(p90), float(p99), float(at), target_ms)


def summarize(results: Sequence[Result], duration_s: float, sla: SlaSpec) -> SlaReport:
    ok = [r for r in results if r.ok]
    span = max(duration_s, 1e-9)
    return SlaReport(
        num_requests=len(results),
        num_ok=len(ok),
        errors=dict(Counter(r.error for r in results if not r.ok)),
        duration_s=duration_s,
        input_tokens_per_s=sum(r.prompt_tokens for r in ok) / span,
        output_tokens_per_s=sum(r.output_tokens for r in ok) / span,
        sla_percentile=sla.percentile,
        ttft=_latency([r.ttft_ms for r in ok if r.ttft_ms is not None], sla.percentile, sla.ttft_ms),
        itl=_latency([r.itl_ms for r in ok if r.itl_ms is not None], sla.percentile, sla.itl_ms),
    )


def format_report(report: SlaReport, title: str) -> str:
    pct = f"p{report.sla_percentile:g}"
    lines = [
        title,
        "",
        f"{'metric':<10}{'p50':>10}{'p90':>10}{'p99':>10}{'SLA ' + pct:>14}{'target':>10}  result",
    ]
    for name, lat in (("TTFT ms", report.ttft), ("ITL ms", report.itl)):
        if lat is None:
            lines.append(f"{name:<10}{'-':>10}{'-':>10}{'-':>10}{'-':>14}{'-':>10}  no data")
            continue
        verdict = "met" if lat.met else f"MISSED ({lat.at_sla_ms / lat.target_ms:.2f}x target)"
        lines.append(
            f"{name:<10}{lat.p50_ms:>10.1f}{lat.p90_ms:>10.1f}{lat.p99_ms:>10.1f}"
            f"{lat.at_sla_ms:>14.1f}{lat.target_ms:>10.0f}  {verdict}"
        )
    lines += [
        "",
        f"throughput: {report.output_tokens_per_s:.1f} output tokens/s, "
        f"{report.input_tokens_per_s:.1f} input tokens/s over {report.duration_s:.1f} s",
        f"requests:   {report.num_ok}/{report.num_requests} ok, {report.num_errors} errors",
    ]
    for message, count in sorted(report.errors.items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"  {count} x {message}")
    lines.append(f"SLA {'MET' if report.sla_met else 'NOT MET'}")
    return "\n".join(lines)
