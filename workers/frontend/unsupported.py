"""Fields vLLM's server knows that this one does not implement: each is a 400 naming it, unless it
carries its no-op value (so clients that always send the default keep working).

Checked on the raw JSON object, before the typed models, so that the message says "not supported"
rather than describing a type the field would have had.
"""

from __future__ import annotations

from typing import Any

from moeplane.workers.frontend.errors import InvalidRequest

# Accepted only when absent, null or empty ({}, [], "", false).
_MUST_BE_EMPTY = {
    "common": (
        "guided_json", "guided_regex", "guided_choice", "guided_grammar", "structural_tag",
        "guided_decoding_backend", "guided_whitespace_pattern", "logits_processors", "bad_words",
        "kv_transfer_params", "vllm_xargs", "mm_processor_kwargs", "use_beam_search",
    ),
    "completions": ("suffix", "prompt_embeds"),
    "chat": ("chat_template", "documents", "continue_final_message"),
    "tokenize": ("chat_template", "continue_final_message", "tools"),
    "detokenize": (),
}

_WHY = {
    "use_beam_search": "beam search is not supported",
    "suffix": "suffix is not supported",
    "chat_template": "only the model's own chat template is supported",
    "continue_final_message": "continuing the final message is not supported",
}


def _empty(value: Any) -> bool:
    return value is None or value is False or value in ({}, [], "")


def _unsupported(param: str, why: str) -> InvalidRequest:
    message = f"Unsupported value for '{param}': {why}"
    return InvalidRequest(message, param=param, code="unsupported_parameter")


def check_unsupported(obj: dict[str, Any], endpoint: str) -> None:
    """Raise InvalidRequest for the first known-but-unsupported field `obj` sets."""
    for name in (*_MUST_BE_EMPTY["common" if endpoint in ("completions", "chat") else endpoint],
                 *(_MUST_BE_EMPTY[endpoint] if endpoint in ("completions", "chat") else ())):
        if name in obj and not _empty(obj[name]):
            raise _unsupported(name, _WHY.get(name, f"{name} is not supported by this server"))
    if endpoint in ("completions", "chat"):
        priority = obj.get("priority")
        if priority is not None and priority != 0:
            raise _unsupported("priority", "priority scheduling is not enabled; send 0 or omit it")
        fmt = obj.get("response_format")
        if fmt is not None and fmt != {"type": "text"}:
            kind = fmt.get("type") if isinstance(fmt, dict) else fmt
            raise _unsupported(
                "response_format", f"only {{\"type\": \"text\"}} is supported, not {str(kind)[:40]!r}"
            )
    if endpoint == "completions":
        best_of, n = obj.get("best_of"), obj.get("n", 1)
        if best_of is not None and best_of != n:
            raise _unsupported("best_of", "must be null or equal to n (there is no candidate ranking)")
    if endpoint == "chat":
        choice = obj.get("tool_choice")
        if choice is not None and choice != "none":
            raise _unsupported("tool_choice", 'tool calling is not supported; send "none" or omit it')
        if not _empty(obj.get("tools")) and choice is None:
            raise _unsupported(
                "tools", 'tool calling is not supported; omit tools or send tool_choice "none"'
            )
