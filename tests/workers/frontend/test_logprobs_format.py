"""The OpenAI/vLLM shapes of logprobs, built from the engines' TokenLogprobs (pure, no server)."""

from __future__ import annotations

import math

import pytest
from moeplane.workers.frontend.generation import derived_seed
from moeplane.workers.frontend.logprobs import TokenNames, chat_logprobs, completion_logprobs, prompt_logprobs
from moeplane.workers.model.tokenizer import ByteTokenizer
from moeplane.workers.serving.logprobs import TokenLogprobs
from moeplane.workers.serving.sequence import SEED_MAX, SEED_MIN

pytestmark = pytest.mark.unit

TOK = ByteTokenizer()
A, B, C = ord("a"), ord("b"), ord("c")


def test_completion_logprobs_put_the_chosen_token_first_and_keep_up_to_n_plus_one() -> None:
    entries = [
        None,  # the first prompt token under echo
        TokenLogprobs(B, -1.5, 2, ((A, -0.5), (B, -1.5))),  # chosen among the top 2
        TokenLogprobs(C, -math.inf, 9, ((A, -0.1), (B, -2.0))),  # chosen outside them; -inf clamped
    ]
    body, end = completion_logprobs(TokenNames(TOK), [TOK.bos_id, B, C], entries, num_top=2, initial_offset=5)
    assert body["tokens"] == ["<|bos|>", "b", "c"]
    assert body["token_logprobs"] == [None, -1.5, -9999.0]
    assert body["top_logprobs"] == [None, {"b": -1.5, "a": -0.5}, {"c": -9999.0, "a": -0.1, "b": -2.0}]
    assert list(body["top_logprobs"][1]) == ["b", "a"]  # the chosen token first, as vLLM
    assert body["text_offset"] == [5, 12, 13] and end == 14
    as_ids, _ = completion_logprobs(TokenNames(TOK, as_ids=True), [B], entries[1:2], num_top=0)
    assert as_ids["tokens"] == [f"token_id:{B}"] and as_ids["top_logprobs"] == [{f"token_id:{B}": -1.5}]


def test_chat_logprobs_have_bytes_and_the_n_most_likely() -> None:
    partial = 0xC3  # the first byte of a two-byte character: its own bytes, its text U+FFFD
    entry = TokenLogprobs(partial, -0.2, 1, ((partial, -0.2), (A, -2.0), (B, -3.0)))
    body = chat_logprobs(TokenNames(TOK), [entry], num_top=2)
    (item,) = body["content"]
    assert (item["token"], item["logprob"], item["bytes"]) == ("\ufffd", -0.2, [partial])
    assert [t["token"] for t in item["top_logprobs"]] == ["\ufffd", "a"]
    assert item["top_logprobs"][1]["bytes"] == [A]
    assert chat_logprobs(TokenNames(TOK), [entry], num_top=0)["content"][0]["top_logprobs"] == []


def test_vllm_prompt_logprobs_shape() -> None:
    entries = [TokenLogprobs(B, -2.0, 3, ((A, -0.5), (C, -1.0)))]
    assert prompt_logprobs(TokenNames(TOK), entries, num_top=1) == [
        None,
        {str(B): {"logprob": -2.0, "rank": 3, "decoded_token": "b"},
         str(A): {"logprob": -0.5, "rank": 1, "decoded_token": "a"}},
    ]


def test_derived_seeds_wrap_in_int64() -> None:
    assert derived_seed(None, 3) is None
    assert [derived_seed(7, j) for j in range(3)] == [7, 8, 9]
    assert derived_seed(SEED_MAX, 1) == SEED_MIN
    assert derived_seed(-1, 1) == 0
