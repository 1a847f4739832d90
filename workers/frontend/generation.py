"""From a parsed request to what the groups generate: prompts as token ids, one `GenerateRequest`
per choice, and the run of all choices of one HTTP request (`Choices`).

Choices are indexed prompt-major, as in vLLM: with P prompts and n choices each, choice
`p * n + j` is prompt p's j-th. Each choice is its own request on the groups (its own prefill,
KV transfer and decode); with a seed, choice j samples with seed + j (wrapping in int64), so the
same request twice gives the same choices and greedy choices are identical, as in vLLM.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from moeplane.workers.frontend.errors import InvalidRequest
from moeplane.workers.frontend.pipeline import Chunk, Endpoint, Exchange, GenerateRequest, Pipeline, Timings
from moeplane.workers.frontend.requests import ChatCompletionRequest, SamplingBody, TokenizeRequest
from moeplane.workers.model.chat_template import ChatTemplateError
from moeplane.workers.model.hf_tokenizer import HFTokenizerError
from moeplane.workers.model.tokenizer import Tokenizer
from moeplane.workers.serving.sequence import SEED_MIN, EngineRequestError, SamplingParams

from moeplane.bus.request_metrics import RequestStatus


@dataclass(frozen=True)
class PromptPlan:
    """One prompt of a request: its token ids and its text (what `echo` returns)."""

    index: int
    token_ids: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class ChoicePlan:
    index: int
    prompt: PromptPlan
    request: GenerateRequest


def chat_prompt_ids(tokenizer: Tokenizer, body: ChatCompletionRequest | TokenizeRequest) -> list[int]:
    """The chat prompt of `body` as the model sees it: the tokenizer's chat template rendered with
    the request's `add_generation_prompt` and `chat_template_kwargs` (vLLM's fields), tokenized
    as transformers' `apply_chat_template(tokenize=True)` does (the template writes BOS itself);
    `add_special_tokens` adds the tokenizer's own on top, as in vLLM. A conversation the template
    refuses (its own `raise_exception`, or a tokenizer without a template) is a 400 on `messages`."""
    assert body.messages is not None
    try:
        return tokenizer.encode_chat(
            list(body.messages), add_generation_prompt=body.add_generation_prompt,
            add_special_tokens=bool(body.add_special_tokens), **(body.chat_template_kwargs or {}),
        )
    except (ChatTemplateError, HFTokenizerError) as exc:
        raise InvalidRequest(f"Invalid value for 'messages': {exc}", param="messages",
                             code="invalid_value") from None


def check_token_ids(name: str, ids: Sequence[int], vocab_size: int) -> None:
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequest(
            f"Invalid value for '{name}': token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})",
            param=name, code="invalid_value",
        )


def derived_seed(seed: int | None, choice: int) -> int | None:
    """Choice j's seed: seed + j, wrapped into int64."""
    if seed is None:
        return None
    return (seed + choice - SEED_MIN) % 2**64 + SEED_MIN


def sampling_params(
    body: SamplingBody, vocab_size: int, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None
) -> SamplingParams:
    """The engine's parameters for a body (vLLM's defaults for what it leaves out). Raises
    InvalidRequest naming the field."""
    bias = tuple(sorted((int(k), v) for k, v in (body.logit_bias or {}).items()))
    check_token_ids("logit_bias", [t for t, _ in bias], vocab_size)
    check_token_ids("stop_token_ids", body.stop_token_ids or (), vocab_size)
    check_token_ids("allowed_token_ids", body.allowed_token_ids or (), vocab_size)
    try:
        return SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=max(0, body.top_k or 0),
            min_p=body.min_p or 0.0,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
            logit_bias=bias,
            allowed_token_ids=body.allowed_token_ids or (),
            seed=body.seed,
            max_tokens=max_tokens,
            min_tokens=body.min_tokens,
            stop=body.stop,
            stop_token_ids=body.stop_token_ids or (),
            include_stop_str_in_output=body.include_stop_str_in_output,
            ignore_eos=body.ignore_eos,
            skip_special_tokens=body.skip_special_tokens,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )
    except EngineRequestError as exc:
        detail = str(exc).removeprefix(f"{exc.field}: ")
        raise InvalidRequest(
            f"Invalid value for '{exc.field}': {detail}", param=exc.field, code="invalid_value"
        ) from None


def plan_choices(
    request_id: str, model: str, endpoint: Endpoint, prompts: Sequence[PromptPlan], n: int,
    sampling: Sequence[SamplingParams],
) -> list[ChoicePlan]:
    """prompts x n choices, prompt-major; `sampling[p]` is prompt p's. A single choice keeps the
    response's id on the groups; several get `<id>-<index>`."""
    total = len(prompts) * n
    plans = []
    for prompt in prompts:
        for j in range(n):
            index = prompt.index * n + j
            base = sampling[prompt.index]
            params = dataclasses.replace(base, seed=derived_seed(base.seed, j))
            rid = request_id if total == 1 else f"{request_id}-{index}"
            req = GenerateRequest(rid, model, endpoint, prompt.token_ids, params)
            plans.append(ChoicePlan(index, prompt, req))
    return plans


_END = object()


class Choices:
    """All choices of one HTTP request, each an `Exchange` of the pipeline, run concurrently.

    `chunks()` yields (choice index, chunk) as they come. Leaving it early (the client went away,
    the timeout, an error of one choice) cancels every choice still running on its groups; the
    handler then calls `finish(status)` once, which records each choice's metrics."""

    def __init__(self, pipeline: Pipeline, plans: Sequence[ChoicePlan], timings: Timings) -> None:
        self.plans = list(plans)
        self.exchanges: list[Exchange] = [
            pipeline.open(p.request, timings if i == 0 else dataclasses.replace(timings))
            for i, p in enumerate(self.plans)
        ]

    async def chunks(self) -> AsyncGenerator[tuple[int, Chunk], None]:
        if len(self.exchanges) == 1:  # the common case, with no task in between
            gen = self.exchanges[0].chunks()
            try:
                async for chunk in gen:
                    yield self.plans[0].index, chunk
            finally:
                await gen.aclose()
            return
        queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._pump(p.index, ex, queue))
            for p, ex in zip(self.plans, self.exchanges, strict=True)
        ]
        try:
            running = len(tasks)
            while running:
                index, item = await queue.get()
                if item is _END:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    assert isinstance(item, Chunk)
                    yield index, item
        finally:
            for task in tasks:
                task.cancel()  # cancels those choices on their groups
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    async def _pump(index: int, exchange: Exchange, queue: asyncio.Queue[tuple[int, object]]) -> None:
        gen = exchange.chunks()
        try:
            async for chunk in gen:
                queue.put_nowait((index, chunk))
            queue.put_nowait((index, _END))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            queue.put_nowait((index, exc))
        finally:
            await gen.aclose()

    def finish(self, status: RequestStatus) -> None:
        for exchange in self.exchanges:
            exchange.finish(status)
