"""A Dynamo-style planner, re-implemented from NVIDIA Dynamo's published planner design
(ai-dynamo/dynamo, `components/src/dynamo/planner/` and `docs/.../planner-design.md`,
throughput-based scaling), as a policy for the replay simulator.

Every `adjustment_interval_s` (180 s, Dynamo's default) it:
1. observes the interval's request count, mean ISL and OSL, mean TTFT and ITL;
2. computes corrections: prefill `actual TTFT / expected TTFT` (expected: a lone request's
   prefill at the ISL) and decode `actual ITL / expected ITL` (expected: the model's ITL at the
   observed batch per rank and context ISL + OSL/2);
3. predicts the next interval's request count, ISL and OSL (Kalman, Dynamo's choice for bursty
   traffic; constant and ARIMA are the alternatives);
4. sizes: prefill `ceil(rate × ISL × min(1, correction) / per-engine input tokens/s)`, with the
   per-engine rate from the largest batch whose step meets the TTFT target; decode
   `ceil(rate × OSL / per-engine output tokens/s)`, with the per-engine rate from the largest
   batch meeting `ITL target / correction` that fits KV memory;
5. caps each change at ±8 replicas and the total at the GPU budget, at least one per pool.

What it leaves out, as Dynamo does: start-up look-ahead, a backlog term, a forecast margin and
any scale-down hysteresis. An engine here is one EP group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from moeplane.api.enums import Predictor, Role
from moeplane.planner.config import PlannerConfig
from moeplane.planner.perf.capacity import decode_context_tokens, decode_itl_s
from moeplane.planner.predictors import LoadPredictor, make_predictor
from moeplane.planner.sizing import PoolModels
from moeplane.planner.tick import LoadObservation, TickInput

SOURCE = (
    "Dynamo-style: re-implemented from NVIDIA Dynamo's planner design (ai-dynamo/dynamo, "
    "components/src/dynamo/planner, throughput-based scaling): 180 s interval, Kalman prediction, "
    "replicas = ceil(predicted rate / per-engine rate), ±8 step cap, GPU budget"
)
ADJUSTMENT_INTERVAL_S = 180.0
MAX_STEP = 8


def prefill_engine_tokens_per_s(models: PoolModels, isl_tokens: float, ttft_ms: float) -> float:
    """Input tokens/s of one group at the largest batch (whole prompts per rank) whose step meets
    the TTFT target; one prompt per rank if even that misses."""
    m = models.prefill
    isl = max(isl_tokens, 1.0)
    best = isl * m.dp_ranks / m.prefill_step_s(isl, isl)
    prompts = 2
    while prompts <= 4096:
        step = m.prefill_step_s(isl * prompts, isl)
        if step * 1e3 > ttft_ms:
            break
        best = max(best, isl * prompts * m.dp_ranks / step)
        prompts *= 2
    return best


def decode_engine_tokens_per_s(models: PoolModels, isl: float, osl: float, itl_ms: float) -> float:
    """Output tokens/s of one group at the largest batch per rank meeting `itl_ms` and fitting KV."""
    m = models.decode
    ctx = decode_context_tokens(isl, osl)
    kv_batch = max(1.0, m.kv_tokens_per_rank / max(isl + osl, 1.0))
    lo, hi = 1.0, kv_batch
    if decode_itl_s(m, hi, ctx) * 1e3 <= itl_ms:
        lo = hi
    else:
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if decode_itl_s(m, mid, ctx) * 1e3 <= itl_ms else (lo, mid)
    return lo * m.dp_ranks * m.output_tokens_per_step / (m.decode_step_s(lo, ctx))


@dataclass
class DynamoPolicy:
    config: PlannerConfig
    models: PoolModels
    predictor: Predictor = Predictor.KALMAN
    adjustment_interval_s: float = ADJUSTMENT_INTERVAL_S
    name: str = "dynamo"
    _seen: list[TickInput] = field(default_factory=list)
    _last_at_s: float = 0.0
    _sizes: tuple[int, int] = (1, 1)
    _prefill_correction: float = 1.0
    _decode_correction: float = 1.0
    _requests: LoadPredictor | None = None
    _isl: LoadPredictor | None = None
    _osl: LoadPredictor | None = None

    def __post_init__(self) -> None:
        self._requests = make_predictor(self.predictor)
        self._isl = make_predictor(self.predictor)
        self._osl = make_predictor(self.predictor)

    def initial(self, first: LoadObservation) -> tuple[int, int]:
        self._sizes = self._size(first.arrival_rate_per_s, first.isl_tokens_mean, first.osl_tokens_mean)
        return self._sizes

    def decide(self, tick: TickInput) -> tuple[int, int]:
        self._seen.append(tick)
        if tick.at_s - self._last_at_s < self.adjustment_interval_s - 1e-6:
            return self._sizes
        span = tick.at_s - self._last_at_s
        ticks, self._seen, self._last_at_s = self._seen, [], tick.at_s
        self._observe(ticks, span)
        assert self._requests is not None and self._isl is not None and self._osl is not None
        rate = self._requests.forecast(1) / self.adjustment_interval_s
        isl, osl = max(self._isl.forecast(1), 1.0), max(self._osl.forecast(1), 1.0)
        p, d = self._size(rate, isl, osl)
        cur_p, cur_d = self._sizes
        p = min(cur_p + MAX_STEP, max(cur_p - MAX_STEP, p))
        d = min(cur_d + MAX_STEP, max(cur_d - MAX_STEP, d))
        self._sizes = self._budget(p, d)
        return self._sizes

    def _observe(self, ticks: list[TickInput], span_s: float) -> None:
        """Interval totals and means, then the corrections against the model's expectations."""
        count = sum(t.load.arrival_rate_per_s for t in ticks) * (span_s / len(ticks))
        busy = [t for t in ticks if t.load.arrival_rate_per_s > 0]
        if not busy:
            return
        weight = sum(t.load.arrival_rate_per_s for t in busy)
        isl = sum(t.load.isl_tokens_mean * t.load.arrival_rate_per_s for t in busy) / weight
        osl = sum(t.load.osl_tokens_mean * t.load.arrival_rate_per_s for t in busy) / weight
        assert self._requests is not None and self._isl is not None and self._osl is not None
        self._requests = self._requests.update(count)
        self._isl = self._isl.update(isl)
        self._osl = self._osl.update(osl)
        ttft = [t.prefill.mean_latency_ms for t in busy if t.prefill.mean_latency_ms is not None]
        if ttft:
            expected = self.models.prefill.prefill_step_s(isl, isl) * 1e3
            self._prefill_correction = (sum(ttft) / len(ttft)) / expected
        d_obs = [t.decode for t in busy if t.decode.mean_latency_ms is not None and t.decode.ready_groups]
        if d_obs:
            ranks = d_obs[-1].ready_groups * self.models.decode.dp_ranks
            batch = max(1.0, d_obs[-1].running_requests / ranks)
            expected = decode_itl_s(self.models.decode, batch, decode_context_tokens(isl, osl)) * 1e3
            actual = sum(o.mean_latency_ms or 0.0 for o in d_obs) / len(d_obs)
            self._decode_correction = actual / expected

    def _size(self, rate: float, isl: float, osl: float) -> tuple[int, int]:
        sla = self.config.sla
        isl, osl = max(isl, 1.0), max(osl, 1.0)
        p_rate = prefill_engine_tokens_per_s(self.models, isl, sla.ttft_ms)
        load = rate * isl * min(1.0, self._prefill_correction)
        p = math.ceil(load / p_rate - 1e-9)
        itl = sla.itl_ms / max(self._decode_correction, 1e-3)
        d_rate = decode_engine_tokens_per_s(self.models, isl, osl, itl)
        d = math.ceil(rate * osl / d_rate - 1e-9)
        return max(1, p), max(1, d)

    def _budget(self, p: int, d: int) -> tuple[int, int]:
        budget = self.config.gpu_budget_nodes
        if budget is None:
            return p, d
        npg_p = self.models.nodes_per_group(Role.PREFILL)
        npg_d = self.models.nodes_per_group(Role.DECODE)
        while p * npg_p + d * npg_d > budget and (p > 1 or d > 1):
            if d > 1 and (d * npg_d >= p * npg_p or p == 1):
                d -= 1
            else:
                p -= 1
        return p, d
