"""Logprobs of one token as the engines return them (no torch): what `logprobs` and
`prompt_logprobs` ask for, computed on the rank from the model's raw distribution."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLogprobs:
    """One position: the chosen token's logprob and rank, and the N most likely alternatives.

    Attributes:
        token_id: the token at this position (sampled, or the prompt's).
        logprob: its natural-log probability under the raw distribution (may be -inf).
        rank: 1 + the number of tokens strictly more likely than it (1: the most likely).
        top: the N most likely tokens as (token id, logprob), most likely first (N = the
            request's `logprobs`; empty for 0).
    """

    token_id: int
    logprob: float
    rank: int
    top: tuple[tuple[int, float], ...] = ()
