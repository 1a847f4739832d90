"""Renders the chunks of a request's choices as one endpoint's streamed events or final body.

As in vLLM's serving_completion.py / serving_chat.py:
- completions with `echo` start each choice with the prompt's text (and, with `logprobs`, the
  prompt's tokens and logprobs, the first one null); with `max_tokens: 0` only the prompt;
- chat streams start with a role chunk per choice (then the echoed last assistant message, with
  `echo`); a chunk whose text is held back (a possible stop string, a partial character) is sent
  only when it carries logprobs;
- usage counts each prompt once and every choice's tokens; `stream_options.include_usage` sends
  it in a last chunk without choices, `continuous_usage_stats` on every chunk as well.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from moeplane.workers.frontend import responses as R
from moeplane.workers.frontend.errors import UpstreamError
from moeplane.workers.frontend.generation import ChoicePlan
from moeplane.workers.frontend.logprobs import TokenNames, chat_logprobs, completion_logprobs, prompt_logprobs
from moeplane.workers.frontend.pipeline import Chunk, Endpoint
from moeplane.workers.serving.logprobs import TokenLogprobs
from moeplane.workers.serving.sequence import FinishReason


@dataclass(frozen=True)
class OutputSpec:
    """What the response shows, beyond the generated text.

    Attributes:
        logprobs: completions' `logprobs` / chat's `top_logprobs` when logprobs are on, else None.
        echo: completions: prepend the prompt; `echo_only` (max_tokens 0): only the prompt.
        chat_echo: chat with `echo`: the last assistant message, prepended to each choice.
        prompt_logprobs: vLLM's `prompt_logprobs` field (non-streaming only).
    """

    endpoint: Endpoint
    request_id: str
    created: int
    model: str
    logprobs: int | None = None
    echo: bool = False
    echo_only: bool = False
    chat_echo: str = ""
    prompt_logprobs: int | None = None
    include_usage: bool = False
    continuous_usage: bool = False

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.prompt_logprobs is not None or (self.echo and self.logprobs is not None)


@dataclass
class _Choice:
    plan: ChoicePlan
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_lps: tuple[TokenLogprobs, ...] = ()
    finish: FinishReason | None = None
    stop_reason: str | int | None = None
    text_offset: int = 0
    echoed: bool = False


class Output:
    def __init__(self, spec: OutputSpec, plans: Sequence[ChoicePlan], names: TokenNames) -> None:
        self.spec = spec
        self.names = names
        self.choices = {p.index: _Choice(p) for p in plans}
        self.prompt_tokens = sum(len(p.token_ids) for p in {c.prompt.index: c.prompt for c in plans}.values())
        self.chat = spec.endpoint is Endpoint.CHAT

    def _add(self, index: int, chunk: Chunk) -> _Choice:
        c = self.choices[index]
        # A group that predates logprobs (a rolling upgrade) ignores the request for them: say so
        # rather than render misaligned logprobs.
        if self.spec.logprobs is not None and len(chunk.logprobs) != len(chunk.token_ids):
            raise UpstreamError("the worker group returned no logprobs for the tokens it generated")
        if self.spec.wants_prompt_logprobs and not c.token_ids and (
            chunk.prompt_logprobs is None or len(chunk.prompt_logprobs) != len(c.plan.prompt.token_ids) - 1
        ):
            raise UpstreamError("the worker group returned no logprobs for the prompt")
        c.text.append(chunk.text)
        c.token_ids.extend(chunk.token_ids)
        c.logprobs.extend(chunk.logprobs)
        if chunk.prompt_logprobs is not None:
            c.prompt_lps = chunk.prompt_logprobs
        if chunk.finish_reason is not None:
            c.finish, c.stop_reason = chunk.finish_reason, chunk.stop_reason
        return c

    def usage(self) -> dict[str, int]:
        return R.usage(self.prompt_tokens, sum(len(c.token_ids) for c in self.choices.values()))

    def _choice_usage(self, c: _Choice) -> dict[str, int] | None:
        return R.usage(len(c.plan.prompt.token_ids), len(c.token_ids)) if self.spec.continuous_usage else None

    # ---- completions' echo ------------------------------------------------------------------------
    def _echo(
        self, c: _Choice, text: str, ids: Sequence[int], lps: Sequence[TokenLogprobs]
    ) -> tuple[str, list[int], list[TokenLogprobs | None]]:
        """(text, token ids, logprob entries) of a completions choice's piece, the prompt first
        when echoing and not yet echoed."""
        entries: list[TokenLogprobs | None] = list(lps)
        if self.spec.echo_only:
            text, ids, entries = "", [], []
        if self.spec.echo and not c.echoed:
            c.echoed = True
            prompt = c.plan.prompt
            return prompt.text + text, [*prompt.token_ids, *ids], [None, *c.prompt_lps, *entries]
        return text, list(ids), entries

    def _completion_logprobs(self, c: _Choice, ids: list[int], entries: list[TokenLogprobs | None]) -> Any:
        if self.spec.logprobs is None:
            return None
        body, c.text_offset = completion_logprobs(self.names, ids, entries, self.spec.logprobs, c.text_offset)
        return body

    # ---- whole responses ----------------------------------------------------------------------------
    async def collect(self, chunks: AsyncIterator[tuple[int, Chunk]]) -> dict[str, Any]:
        async for index, chunk in chunks:
            self._add(index, chunk)
        s, out = self.spec, []
        for c in sorted(self.choices.values(), key=lambda c: c.plan.index):
            plps = None
            if s.prompt_logprobs is not None:
                plps = prompt_logprobs(self.names, c.prompt_lps, s.prompt_logprobs)
            if self.chat:
                lps = None if s.logprobs is None else chat_logprobs(self.names, c.logprobs, s.logprobs)
                text = s.chat_echo + "".join(c.text)
                out.append(R.chat_choice(c.plan.index, text, lps, c.finish, c.stop_reason))
            else:
                text, ids, entries = self._echo(c, "".join(c.text), c.token_ids, c.logprobs)
                lps = self._completion_logprobs(c, ids, entries)
                out.append(R.completion_choice(c.plan.index, text, lps, c.finish, c.stop_reason, plps))
        if self.chat:
            extra = {}
            if s.prompt_logprobs is not None:  # vLLM puts the chat prompt's at the top level
                first = min(self.choices.values(), key=lambda c: c.plan.index)
                extra["prompt_logprobs"] = prompt_logprobs(self.names, first.prompt_lps, s.prompt_logprobs)
            return R.body("chat.completion", s.request_id, s.created, s.model, out, self.usage(), **extra)
        return R.body("text_completion", s.request_id, s.created, s.model, out, self.usage())

    # ---- streams ------------------------------------------------------------------------------------
    async def stream(self, resp: web.StreamResponse, chunks: AsyncIterator[tuple[int, Chunk]]) -> None:
        s = self.spec
        kind = "chat.completion.chunk" if self.chat else "text_completion"

        async def send(choice: dict[str, Any], c: _Choice) -> None:
            use = self._choice_usage(c)
            await resp.write(R.sse(R.body(kind, s.request_id, s.created, s.model, [choice], use)))

        if self.chat:
            for c in sorted(self.choices.values(), key=lambda c: c.plan.index):
                role = {"role": "assistant", "content": ""}
                await send(R.chat_delta(c.plan.index, role, None, None, None), c)
                if s.chat_echo:
                    await send(R.chat_delta(c.plan.index, {"content": s.chat_echo}, None, None, None), c)
        async for index, chunk in chunks:
            c = self._add(index, chunk)
            finish = chunk.finish_reason
            stop = chunk.stop_reason if finish is not None else None
            if self.chat:
                if not chunk.text and finish is None and not (s.logprobs is not None and chunk.logprobs):
                    continue  # held-back text (a possible stop string, a partial character)
                lps = None if s.logprobs is None else chat_logprobs(self.names, chunk.logprobs, s.logprobs)
                delta = {"content": chunk.text} if chunk.text else {}
                await send(R.chat_delta(index, delta, lps, finish, stop), c)
                continue
            text, ids, entries = self._echo(c, chunk.text, chunk.token_ids, chunk.logprobs)
            if not text and finish is None and not (s.logprobs is not None and ids):
                continue
            lps = self._completion_logprobs(c, ids, entries)
            await send(R.completion_choice(index, text, lps, finish, stop), c)
        if s.include_usage:
            await resp.write(R.sse(R.body(kind, s.request_id, s.created, s.model, [], self.usage())))
        await resp.write(R.SSE_DONE)
