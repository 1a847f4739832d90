"""Token sampling on the rank: vLLM's logits pipeline over a batch, and the logprobs it returns.

Per step, for logits [N, V] of N requests (fp32 on the logits' device), in vLLM's order:
1. raw logprobs = log_softmax(logits), kept for the requests that asked for logprobs;
2. `allowed_token_ids`, `min_tokens` (EOS and `stop_token_ids` masked until the output is long
   enough) and `logit_bias`;
3. penalties: repetition over prompt + output tokens, frequency and presence over output tokens;
4. greedy requests take the argmax here; the others divide by their temperature, then filter by
   min_p, top_k, top_p and draw with the exponential race (argmax of probs / Exp(1) noise, which
   draws token i with probability probs[i]).

Each stage is a pure function of tensors, tested against a plain per-row reference. A seeded
request draws its n-th output token's noise from a generator seeded with (seed, n), so its tokens
do not depend on how it is batched, preempted, or moved between ranks; unseeded requests draw from
the sampler's own generator. Nothing touches torch's global RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from moeplane.workers.serving.logprobs import TokenLogprobs
from moeplane.workers.serving.sequence import SamplingParams
from moeplane.workers.serving.sequence import Sequence as Seq

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, index) pairs over 63 bits


@dataclass(frozen=True)
class SampleRow:
    """One request's row of the batch. `output_ids` holds every output token so far (those of an
    earlier attempt included), so its length is the index of the token being sampled."""

    params: SamplingParams
    prompt_ids: Sequence[int]
    output_ids: Sequence[int]


@dataclass(frozen=True)
class Sampled:
    token_id: int
    logprobs: TokenLogprobs | None = None  # when the request asked for logprobs


def token_generator(seed: int, output_index: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * _MIX + output_index) % (2**63 - 1))
    return gen


# ---- stages: logits [N, V] float32 -> logits [N, V] ----------------------------------------------
def apply_allowed_tokens(logits: torch.Tensor, rows: Sequence[SampleRow]) -> torch.Tensor:
    """-inf outside each row's `allowed_token_ids` (rows without the list are unchanged)."""
    for i, row in enumerate(rows):
        allowed = row.params.allowed_token_ids
        if allowed:
            keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
            keep[list(allowed)] = True
            logits[i].masked_fill_(~keep, float("-inf"))
    return logits


def stop_ids(params: SamplingParams, eos_ids: Collection[int]) -> list[int]:
    """The tokens that end a request: its stop_token_ids, and every EOS id unless ignore_eos."""
    ids = list(params.stop_token_ids)
    if not params.ignore_eos:
        ids.extend(sorted(eos_ids))
    return ids


def apply_min_tokens(
    logits: torch.Tensor, rows: Sequence[SampleRow], eos_ids: Collection[int]
) -> torch.Tensor:
    """-inf on the stop tokens of rows whose output is still shorter than `min_tokens`."""
    for i, row in enumerate(rows):
        if len(row.output_ids) < row.params.min_tokens:
            ids = stop_ids(row.params, eos_ids)
            if ids:
                logits[i, ids] = float("-inf")
    return logits


def apply_logit_bias(logits: torch.Tensor, rows: Sequence[SampleRow]) -> torch.Tensor:
    for i, row in enumerate(rows):
        if row.params.logit_bias:
            ids = [t for t, _ in row.params.logit_bias]
            bias = [b for _, b in row.params.logit_bias]
            logits[i, ids] += torch.tensor(bias, dtype=logits.dtype, device=logits.device)
    return logits


def token_counts(
    rows: Sequence[SampleRow], vocab_size: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_mask [N, V] bool, output_counts [N, V] float32) of each row's tokens."""
    prompt_mask = torch.zeros(len(rows), vocab_size, dtype=torch.bool, device=device)
    counts = torch.zeros(len(rows), vocab_size, dtype=torch.float32, device=device)
    for i, row in enumerate(rows):
        if row.prompt_ids:
            prompt_mask[i, list(row.prompt_ids)] = True
        if row.output_ids:
            ids = torch.tensor(list(row.output_ids), dtype=torch.int64, device=device)
            counts[i].index_add_(0, ids, torch.ones(ids.shape[0], device=device))
    return prompt_mask, counts


def apply_penalties(
    logits: torch.Tensor,
    prompt_mask: torch.Tensor,
    output_counts: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """vLLM's penalties. prompt_mask [N, V] bool, output_counts [N, V] float32; the penalties
    are [N] float32. Repetition divides positive and multiplies non-positive logits of tokens seen in
    the prompt or the output; frequency subtracts penalty x count and presence subtracts penalty once
    per token seen in the output."""
    output_mask = output_counts > 0
    rep = repetition.unsqueeze(1).expand_as(logits)
    rep = torch.where(prompt_mask | output_mask, rep, torch.ones_like(rep))
    logits = torch.where(logits > 0, logits / rep, logits * rep)
    logits = logits - frequency.unsqueeze(1) * output_counts
    return logits - presence.unsqueeze(1) * output_mask.to(logits.dtype)


def min_p_filter(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """-inf where a token's probability is below min_p [N] x the row's highest probability."""
    probs = torch.softmax(logits, dim=-1)
    threshold = min_p.unsqueeze(1) * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, float("-inf"))


def top_k_top_p_filter(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """vLLM's top-k then top-p. top_k [N] int64 (0 or >= V: off; ties with the k-th logit stay),
    top_p [N] float32 (1: off). Top-p keeps the smallest set of most likely tokens whose mass
    reaches p, over the top-k renormalised distribution, and always at least one token."""
    vocab = logits.shape[1]
    k = torch.where((top_k <= 0) | (top_k > vocab), torch.full_like(top_k, vocab), top_k)
    ascending, order = logits.sort(dim=-1)
    kth = ascending.gather(1, (vocab - k).unsqueeze(1))
    ascending = ascending.masked_fill(ascending < kth, float("-inf"))
    cumulative = torch.softmax(ascending, dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - top_p).unsqueeze(1)
    drop[:, -1] = False
    ascending = ascending.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, ascending)


def token_logprobs(
    raw: torch.Tensor, token_ids: Sequence[int], num_top: Sequence[int]
) -> list[TokenLogprobs]:
    """raw log-softmax rows [M, V], the token at each row, and how many alternatives each row
    wants -> one TokenLogprobs per row (values as Python floats)."""
    if raw.shape[0] == 0:
        return []
    ids = torch.tensor(list(token_ids), dtype=torch.int64, device=raw.device)
    chosen = raw.gather(1, ids.unsqueeze(1))
    ranks = ((raw > chosen).sum(dim=1) + 1).tolist()
    k = max(num_top, default=0)
    top_ids: list[list[int]] = [[] for _ in token_ids]
    top_vals: list[list[float]] = [[] for _ in token_ids]
    if k:
        values, indices = raw.topk(min(k, raw.shape[1]), dim=-1)
        top_ids, top_vals = indices.tolist(), values.tolist()
    out = []
    for i, (tok, lp) in enumerate(zip(token_ids, chosen.squeeze(1).tolist(), strict=True)):
        n = num_top[i]
        top = tuple(zip(top_ids[i][:n], top_vals[i][:n], strict=True))
        out.append(TokenLogprobs(int(tok), float(lp), int(ranks[i]), top))
    return out


def extend_prompt_logprobs(
    seq: Seq, start: int, end: int, hidden: torch.Tensor, logits: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """A step computed `seq`'s tokens [start, end) with final hidden states `hidden` [end - start, H]:
    append the logprobs of the prompt tokens they score (the logits at position i score token i+1)
    that `seq.prompt_logprobs` does not hold yet (a recomputed prefix adds nothing), in slices that
    bound the [rows, vocab] logits. `logits` maps hidden states to fp32 logits."""
    n = seq.sampling.prompt_logprobs or 0
    first = max(start, len(seq.prompt_logprobs))
    last = min(end, seq.num_prompt_tokens - 1)
    for lo in range(first, last, 256):
        hi = min(lo + 256, last)
        raw = torch.log_softmax(logits(hidden[lo - start : hi - start]).float(), dim=-1)
        seq.prompt_logprobs.extend(token_logprobs(raw, seq.token_ids[lo + 1 : hi + 1], [n] * (hi - lo)))


# ---- the sampler --------------------------------------------------------------------------------
class Sampler:
    def __init__(self, eos_id: int | Collection[int] | None = None, seed: int = 0) -> None:
        # Every EOS id of the model (generation_config.json may list several).
        self.eos_ids: frozenset[int] = (
            frozenset() if eos_id is None else frozenset({eos_id} if isinstance(eos_id, int) else eos_id)
        )
        self._seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(str(device))
        if gen is None:
            gen = self._generators[str(device)] = torch.Generator(device=device)
            gen.manual_seed(self._seed)
        return gen

    def __call__(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> list[Sampled]:
        """logits [N, V] (any float dtype, on any device) -> one sampled token per row."""
        if logits.shape[0] != len(rows):
            raise ValueError(f"{logits.shape[0]} logits rows for {len(rows)} requests")
        if not rows:
            return []
        raw = logits.detach().float()
        logits = self.process(raw, rows)
        tokens = self._choose(logits, rows)
        wants = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        lps: dict[int, TokenLogprobs] = {}
        if wants:
            raw_lp = torch.log_softmax(raw[wants], dim=-1)
            num_top = [rows[i].params.logprobs or 0 for i in wants]
            found = token_logprobs(raw_lp, [tokens[i] for i in wants], num_top)
            lps = dict(zip(wants, found, strict=True))
        return [Sampled(t, lps.get(i)) for i, t in enumerate(tokens)]

    def process(self, raw: torch.Tensor, rows: Sequence[SampleRow]) -> torch.Tensor:
        """Steps 2-3 on a copy of `raw`: the masks, the bias and the penalties."""
        logits = apply_allowed_tokens(raw.clone(), rows)
        logits = apply_min_tokens(logits, rows, self.eos_ids)
        logits = apply_logit_bias(logits, rows)
        p = [r.params for r in rows]
        if any(x.repetition_penalty != 1.0 or x.frequency_penalty or x.presence_penalty for x in p):
            prompt_mask, counts = token_counts(rows, logits.shape[1], logits.device)

            def col(name: str) -> torch.Tensor:
                return torch.tensor([getattr(x, name) for x in p], dtype=torch.float32, device=logits.device)

            logits = apply_penalties(
                logits, prompt_mask, counts, col("repetition_penalty"), col("frequency_penalty"),
                col("presence_penalty"),
            )
        # A row whose masks left no token at all (e.g. allowed_token_ids = [EOS] with min_tokens)
        # samples from its raw logits rather than from nothing.
        dead = torch.isneginf(logits.amax(dim=-1))
        if bool(dead.any()):
            logits[dead] = raw[dead]
        return logits

    def _choose(self, logits: torch.Tensor, rows: Sequence[SampleRow]) -> list[int]:
        tokens = logits.argmax(dim=-1).tolist()
        rand = [i for i, r in enumerate(rows) if not r.params.is_greedy]
        if not rand:
            return [int(t) for t in tokens]
        device = logits.device
        p = [rows[i].params for i in rand]
        x = logits[rand] / torch.tensor([q.temperature for q in p], device=device).unsqueeze(1)
        if any(q.min_p > 0 for q in p):
            x = min_p_filter(x, torch.tensor([q.min_p for q in p], device=device))
        if any(q.top_k > 0 or q.top_p < 1.0 for q in p):
            x = top_k_top_p_filter(
                x, torch.tensor([q.top_k for q in p], dtype=torch.int64, device=device),
                torch.tensor([q.top_p for q in p], dtype=torch.float32, device=device),
            )
        probs = torch.softmax(x, dim=-1)
        noise = torch.empty_like(probs)
        unseeded = [j for j, q in enumerate(p) if q.seed is None]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), probs.shape[1], device=device).exponential_(
                generator=self._generator(device)
            )
        for j, q in enumerate(p):
            if q.seed is not None:
                index = len(rows[rand[j]].output_ids)
                noise[j].exponential_(generator=token_generator(q.seed, index, device))
        drawn = (probs / noise).argmax(dim=-1).tolist()
        for j, i in enumerate(rand):
            tokens[i] = drawn[j]
        return [int(t) for t in tokens]
