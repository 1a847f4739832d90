"""Pool capacities under the SLA, from any step model: the queueing side of the performance model.

Prefill. Each attention DP rank of each group is a server; the router sends a request to the rank
that frees up first, which is a central FIFO queue over `c = groups × dp_ranks` servers: M/G/c.
A request of `L` input tokens occupies its rank for `L × step(n)/n` seconds, where `n = max(L,
batch_tokens)` (short prompts are batched up to `batch_tokens` per rank and share the step), and
cannot finish before its own step, `step(L, L)`. The TTFT at percentile p is that floor at the
p-quantile prompt length plus the p-quantile of the M/G/c wait (Erlang C with the Allen-Cunneen
factor `(1 + cv²) / 2`, exponential tail).

Decode. A group's DP ranks run `b` sequences each; ITL is `step(b, context) / tokens per step`.
The largest batch meets the ITL target and fits in KV memory, where each sequence reserves
`ISL + OSL` tokens. Sequences live `(OSL - 1) × ITL`, so by Little's law a pool holds
`rate × (OSL - 1) × ITL` sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist

from moeplane.planner.perf.errors import PerfModelError
from moeplane.planner.perf.step_model import DecodeStepModel, PrefillStepModel

DEFAULT_PREFILL_BATCH_TOKENS = 8192
PEAK_WINDOW_S = 5.0  # the window of an observed peak arrival rate


def lognormal_quantile(mean: float, cv: float, percentile: float) -> float:
    """The `percentile` quantile of a lognormal with this mean and coefficient of variation."""
    if cv <= 0:
        return mean
    sigma2 = math.log1p(cv * cv)
    mu = math.log(mean) - sigma2 / 2
    return math.exp(mu + NormalDist().inv_cdf(percentile / 100) * math.sqrt(sigma2))


def lognormal_cdf(x: float, mean: float, cv: float) -> float:
    """P(X <= x) for a lognormal with this mean and coefficient of variation."""
    if cv <= 0:
        return 1.0 if x >= mean else 0.0
    sigma2 = math.log1p(cv * cv)
    mu = math.log(mean) - sigma2 / 2
    return NormalDist().cdf((math.log(max(x, 1e-9)) - mu) / math.sqrt(sigma2))


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with `offered_load` = λ × mean service."""
    if servers <= 0 or offered_load >= servers:
        return 1.0
    if offered_load <= 0:
        return 0.0
    blocking = 1.0  # Erlang B by its stable recursion
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
        # Past the load, B only falls: once it is negligible the answer is 0 to 1e-12. Without
        # this a pool of 10^5 lanes costs 10^5 steps per call (the layout search sizes many).
        if k > offered_load and blocking * servers < 1e-12:
            break
    return servers * blocking / (servers - offered_load * (1 - blocking))


@dataclass(frozen=True)
class PrefillRequestTimes:
    service_s: float  # time a request holds its rank (its share of the batched step)
    floor_s: float  # its own step: no request finishes faster


def prefill_request_times(
    model: PrefillStepModel,
    isl_tokens: float,
    batch_tokens: float = DEFAULT_PREFILL_BATCH_TOKENS,
    cached_fraction: float = 0.0,
) -> PrefillRequestTimes:
    """A prompt of `isl_tokens` of which `cached_fraction` comes from the prefix cache: its
    uncached tokens run at its length (the simulator does the same per request)."""
    if isl_tokens <= 0:
        raise PerfModelError(f"isl_tokens must be positive, got {isl_tokens}")
    if not 0 <= cached_fraction < 1:
        raise PerfModelError(f"cached_fraction must be in [0, 1), got {cached_fraction}")
    new = max(1.0, isl_tokens * (1 - cached_fraction))
    n = max(new, batch_tokens)
    service = new * model.prefill_step_s(n, isl_tokens) / n
    return PrefillRequestTimes(service_s=service, floor_s=model.prefill_step_s(new, isl_tokens))


_QUADRATURE = 16  # lognormal quantiles averaged for a mean over the prompt-length mix


def service_moments(
    model: PrefillStepModel,
    isl_tokens: float,
    isl_cv: float = 0.0,
    batch_tokens: float = DEFAULT_PREFILL_BATCH_TOKENS,
    cached_fraction: float = 0.0,
) -> tuple[float, float]:
    """(mean, coefficient of variation) of the rank time per request over a lognormal mix of
    prompt lengths (mean `isl_tokens`, coefficient of variation `isl_cv`): long prompts cost
    more than in proportion (attention grows with the square of their length), so the mean
    prompt's time understates the mix's, and service varies more than prompt length."""
    if isl_cv <= 0:
        return prefill_request_times(model, isl_tokens, batch_tokens, cached_fraction).service_s, 0.0
    points = [
        lognormal_quantile(isl_tokens, isl_cv, 100 * (i + 0.5) / _QUADRATURE) for i in range(_QUADRATURE)
    ]
    # Quantile points have the distribution's shape but not exactly its mean: rescale to it.
    scale = isl_tokens / (sum(points) / len(points))
    times = [
        prefill_request_times(model, max(1.0, x * scale), batch_tokens, cached_fraction).service_s
        for x in points
    ]
    mean = sum(times) / len(times)
    var = sum((t - mean) ** 2 for t in times) / len(times)
    return mean, math.sqrt(var) / mean if mean > 0 else 0.0


def mean_service_s(
    model: PrefillStepModel,
    isl_tokens: float,
    isl_cv: float = 0.0,
    batch_tokens: float = DEFAULT_PREFILL_BATCH_TOKENS,
    cached_fraction: float = 0.0,
) -> float:
    return service_moments(model, isl_tokens, isl_cv, batch_tokens, cached_fraction)[0]


def prefill_ttft_s(
    model: PrefillStepModel,
    *,
    arrival_rate_per_s: float,
    groups: int,
    isl_tokens: float,
    isl_cv: float = 0.0,
    percentile: float = 90.0,
    batch_tokens: float = DEFAULT_PREFILL_BATCH_TOKENS,
    cached_fraction: float = 0.0,
    peak_rate_per_s: float | None = None,
    peak_window_s: float = PEAK_WINDOW_S,
    attainable_s: float | None = None,
    service_s: float | None = None,
) -> float:
    """Predicted TTFT (seconds) at `percentile` for a pool of `groups` groups; inf if overloaded.

    `arrival_rate_per_s` is the sustained rate (the M/G/c wait); `peak_rate_per_s`, the busiest
    `peak_window_s` seconds, adds the wait of the backlog such a peak leaves where it exceeds
    what the pool serves (a pool with hundreds of lanes rides a short peak, it cannot sustain it).
    With `attainable_s`, prompts whose own step alone exceeds it are left out of the percentile:
    no pool size brings them under it, so sizing for them would only add groups. `service_s`,
    the mean rank time per request of the actual prompts when known, replaces the estimate from
    the lengths' mean and cv.
    """
    servers = groups * model.dp_ranks
    estimate, service_cv = service_moments(model, isl_tokens, isl_cv, batch_tokens, cached_fraction)
    if service_s is None:
        service_s = estimate
    tail_isl = lognormal_quantile(isl_tokens, isl_cv, percentile)
    if attainable_s is not None:
        longest = longest_prompt(model, attainable_s, cached_fraction, batch_tokens)
        share = lognormal_cdf(longest, isl_tokens, isl_cv)
        if tail_isl > longest and share > 1e-6:  # the percentile of the prompts that can meet it
            tail_isl = min(longest, lognormal_quantile(isl_tokens, isl_cv, percentile * share))
    tail = prefill_request_times(model, tail_isl, batch_tokens, cached_fraction)
    if arrival_rate_per_s <= 0:
        return tail.floor_s
    offered = arrival_rate_per_s * service_s
    if servers == 0 or offered >= servers:
        return math.inf
    served_per_s = servers / service_s
    p_wait = erlang_c(servers, offered)
    tail_prob = 1 - percentile / 100
    wait = 0.0
    if p_wait > tail_prob:
        drain_per_s = served_per_s - arrival_rate_per_s
        wait = math.log(p_wait / tail_prob) * (1 + service_cv * service_cv) / 2 / drain_per_s
    peak = max(arrival_rate_per_s, peak_rate_per_s or 0.0)
    backlog = max(0.0, peak - served_per_s) * peak_window_s
    return tail.floor_s + wait + backlog / served_per_s


def longest_prompt(
    model: PrefillStepModel,
    floor_s: float,
    cached_fraction: float = 0.0,
    batch_tokens: float = DEFAULT_PREFILL_BATCH_TOKENS,
) -> float:
    """The longest prompt whose own prefill step takes at most `floor_s` (at least one token)."""

    def floor(isl: float) -> float:
        return prefill_request_times(model, isl, batch_tokens, cached_fraction).floor_s

    lo, hi = 1.0, 1024.0
    while floor(hi) <= floor_s and hi < 1e7:
        lo, hi = hi, hi * 2
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if floor(mid) <= floor_s else (lo, mid)
    return lo


@dataclass(frozen=True)
class PrefillPoint:
    """Prefill capacity of a pool of `groups` groups at one prompt length, under a TTFT target."""

    isl_tokens: float
    groups: int
    ttft_target_ms: float
    feasible: bool  # False when even a lone request misses the target
    service_s: float
    floor_s: float
    raw_input_tokens_per_s_per_group: float  # every rank busy all the time
    sla_input_tokens_per_s_per_group: float  # the most load meeting the TTFT target
    max_utilization: float


def prefill_capacity(
    model: PrefillStepModel,
    *,
    isl_tokens: float,
    ttft_target_ms: float,
    groups: int = 1,
    isl_cv: float = 0.0,
    percentile: float = 90.0,
    batch_tokens: float = DEFAULT_PREFILL_BATCH_TOKENS,
) -> PrefillPoint:
    """Input tokens/s one group sustains in a pool of `groups` while meeting the TTFT target."""
    if groups < 1:
        raise PerfModelError(f"groups must be at least 1, got {groups}")
    times = prefill_request_times(model, isl_tokens, batch_tokens)
    servers = groups * model.dp_ranks
    full_rate = servers / times.service_s
    raw = full_rate * isl_tokens / groups
    target_s = ttft_target_ms / 1e3

    def ttft(rate: float) -> float:
        return prefill_ttft_s(
            model,
            arrival_rate_per_s=rate,
            groups=groups,
            isl_tokens=isl_tokens,
            isl_cv=isl_cv,
            percentile=percentile,
            batch_tokens=batch_tokens,
        )

    if ttft(0.0) > target_s:
        return PrefillPoint(
            isl_tokens, groups, ttft_target_ms, False, times.service_s, times.floor_s, raw, 0.0, 0.0
        )
    lo, hi = 0.0, full_rate
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ttft(mid) <= target_s else (lo, mid)
    return PrefillPoint(
        isl_tokens,
        groups,
        ttft_target_ms,
        True,
        times.service_s,
        times.floor_s,
        raw,
        lo * isl_tokens / groups,
        lo / full_rate,
    )


def prefill_groups_needed(
    model: PrefillStepModel,
    *,
    arrival_rate_per_s: float,
    isl_tokens: float,
    ttft_target_ms: float,
    isl_cv: float = 0.0,
    percentile: float = 90.0,
    batch_tokens: float = DEFAULT_PREFILL_BATCH_TOKENS,
    cached_fraction: float = 0.0,
    peak_rate_per_s: float | None = None,
    service_s: float | None = None,
    max_groups: int = 100_000,
) -> int | None:
    """Fewest groups whose predicted TTFT meets the target; None if no pool size can."""
    target_s = ttft_target_ms / 1e3

    def ok(groups: int) -> bool:
        return (
            prefill_ttft_s(
                model,
                arrival_rate_per_s=arrival_rate_per_s,
                groups=groups,
                isl_tokens=isl_tokens,
                isl_cv=isl_cv,
                percentile=percentile,
                batch_tokens=batch_tokens,
                cached_fraction=cached_fraction,
                peak_rate_per_s=peak_rate_per_s,
                attainable_s=target_s,
                service_s=service_s,
            )
            <= target_s
        )

    if arrival_rate_per_s <= 0:
        return 0
    service = service_s or mean_service_s(model, isl_tokens, isl_cv, batch_tokens, cached_fraction)
    lo = max(1, math.ceil(arrival_rate_per_s * service / model.dp_ranks))
    hi = lo
    while not ok(hi):  # TTFT falls as groups grow: gallop, then bisect
        if hi >= max_groups:
            return None
        hi = min(max_groups, hi * 2)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


# ---- decode ------------------------------------------------------------------------------------


class DecodeLimit(StrEnum):
    ITL = "itl"  # a larger batch would miss the ITL target
    KV = "kv"  # a larger batch would not fit in KV memory


def decode_context_tokens(isl_tokens: float, osl_tokens: float, osl_cv: float = 0.0) -> float:
    """Mean KV length of the sequences decoding at any moment: the prompt plus half the output,
    where long outputs count more because they stay longer (length-biased: E[osl²] / E[osl])."""
    return isl_tokens + osl_tokens * (1 + osl_cv * osl_cv) / 2


def decode_kv_tokens_per_sequence(isl_tokens: float, osl_tokens: float, osl_cv: float = 0.0) -> float:
    """KV tokens reserved per decoding sequence (ISL + OSL each), length-biased like the context."""
    return isl_tokens + osl_tokens * (1 + osl_cv * osl_cv)


def decode_itl_s(model: DecodeStepModel, batch_per_rank: float, context_tokens: float) -> float:
    return model.decode_step_s(batch_per_rank, context_tokens) / model.output_tokens_per_step


@dataclass(frozen=True)
class DecodePoint:
    isl_tokens: float
    osl_tokens: float
    itl_target_ms: float
    feasible: bool  # False when even one sequence per rank misses the target
    batch_per_rank: float  # the largest batch meeting ITL and KV
    kv_batch_per_rank: float  # the largest batch KV memory holds
    limit: DecodeLimit
    itl_ms: float  # ITL at that batch
    sequences_per_group: float
    output_tokens_per_s_per_group: float


def decode_capacity(
    model: DecodeStepModel,
    *,
    isl_tokens: float,
    osl_tokens: float,
    itl_target_ms: float,
    osl_cv: float = 0.0,
) -> DecodePoint:
    """The largest decode batch per rank meeting `itl_target_ms` and fitting KV memory."""
    ctx = decode_context_tokens(isl_tokens, osl_tokens, osl_cv)
    kv_batch = model.kv_tokens_per_rank / decode_kv_tokens_per_sequence(isl_tokens, osl_tokens, osl_cv)
    target_s = itl_target_ms / 1e3
    if decode_itl_s(model, 1.0, ctx) > target_s or kv_batch < 1:
        return DecodePoint(
            isl_tokens,
            osl_tokens,
            itl_target_ms,
            False,
            0.0,
            kv_batch,
            DecodeLimit.ITL,
            decode_itl_s(model, 1.0, ctx) * 1e3,
            0.0,
            0.0,
        )
    if decode_itl_s(model, kv_batch, ctx) <= target_s:
        batch, limit = kv_batch, DecodeLimit.KV
    else:
        lo, hi = 1.0, kv_batch
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if decode_itl_s(model, mid, ctx) <= target_s else (lo, mid)
        batch, limit = lo, DecodeLimit.ITL
    itl = decode_itl_s(model, batch, ctx)
    seqs = batch * model.dp_ranks
    return DecodePoint(
        isl_tokens, osl_tokens, itl_target_ms, True, batch, kv_batch, limit, itl * 1e3, seqs, seqs / itl
    )


def decode_itl_at_load_s(
    model: DecodeStepModel,
    *,
    arrival_rate_per_s: float,
    groups: int,
    isl_tokens: float,
    osl_tokens: float,
    osl_cv: float = 0.0,
) -> float:
    """Steady-state ITL of a pool of `groups` at this arrival rate (inf when it cannot keep up)."""
    ctx = decode_context_tokens(isl_tokens, osl_tokens, osl_cv)
    ranks = groups * model.dp_ranks
    if arrival_rate_per_s <= 0:
        return decode_itl_s(model, 0.0, ctx)
    if ranks == 0:
        return math.inf
    kv_batch = model.kv_tokens_per_rank / decode_kv_tokens_per_sequence(isl_tokens, osl_tokens, osl_cv)
    steps = max(osl_tokens - 1, 1.0)

    def excess(batch: float) -> float:  # batch held minus batch the arrivals need at this ITL
        return batch - arrival_rate_per_s * steps * decode_itl_s(model, batch, ctx) / ranks

    if excess(kv_batch) < 0:
        return math.inf
    lo, hi = 0.0, kv_batch
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if excess(mid) >= 0 else (mid, hi)
    return decode_itl_s(model, hi, ctx)


def decode_groups_needed(point: DecodePoint, *, arrival_rate_per_s: float) -> int | None:
    """Fewest groups holding the sequences `arrival_rate_per_s` keeps alive at the point's ITL."""
    if arrival_rate_per_s <= 0:
        return 0
    if not point.feasible:
        return None
    steps = max(point.osl_tokens - 1, 1.0)
    concurrent = arrival_rate_per_s * steps * point.itl_ms / 1e3
    return max(1, math.ceil(concurrent / point.sequences_per_group - 1e-9))
