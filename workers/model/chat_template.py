"""Chat templates rendered the way transformers' `apply_chat_template` renders them.

The template is jinja2 in an `ImmutableSandboxedEnvironment` with `trim_blocks` and
`lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that does not escape HTML
(`ensure_ascii=False`, optional indent/separators/sort_keys), and the globals
`raise_exception(message)`, `strftime_now(format)`, a `dict` constructor and an attribute-safe
`namespace`. The context is the tokenizer's named special tokens (`bos_token`, `eos_token`, ...),
then the caller's keyword arguments (they win), then `messages`, `tools`, `documents` and
`add_generation_prompt`. Messages are plain JSON data (pydantic models are dumped first).
Templates come from checkpoints, i.e. from strangers: the sandbox is why.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A template that fails to render (including its own `raise_exception`), or bad messages."""


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` for templates, without attribute access to the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """A jinja namespace that refuses underscore-prefixed attributes (no CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}"
            )


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template (cached per source text); ChatTemplateError on a syntax error."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the chat template does not parse: {exc} (line {exc.lineno})") from None


def plain(value: Any) -> Any:
    """JSON-plain data for the template: dicts, lists, str, int, float, bool, None."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return plain(dump(mode="json", exclude_none=True))
    raise ChatTemplateError(f"a chat message holds a {type(value).__name__}, which a template cannot read")


def render_chat_template(
    source: str,
    messages: Sequence[Any],
    special_tokens: Mapping[str, str],
    add_generation_prompt: bool = True,
    tools: Sequence[Any] | None = None,
    documents: Sequence[Any] | None = None,
    **kwargs: Any,
) -> str:
    """One conversation rendered by `source`, as `apply_chat_template(..., tokenize=False)`."""
    chat = plain(list(messages))
    for i, message in enumerate(chat):
        if not isinstance(message, dict):
            raise ChatTemplateError(f"messages[{i}] must be an object with role and content")
    context = {**special_tokens, **plain(kwargs)}
    try:
        return compile_template(source).render(
            messages=chat,
            tools=None if tools is None else plain(list(tools)),
            documents=None if documents is None else plain(list(documents)),
            add_generation_prompt=add_generation_prompt,
            **context,
        )
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"the chat template refused the conversation: {exc}") from None
