"""`HFTokenizer`: a checkpoint's own tokenizer, as transformers' `PreTrainedTokenizerFast` sees it.

The `tokenizers` library runs `tokenizer.json` (its post-processor decides whether BOS is added,
as in transformers 5, which drops tokenizer_config's add_bos_token when tokenizer.json exists);
`tokenizer_config.json` supplies the named special tokens (bos/eos/pad/unk),
`added_tokens_decoder` and `clean_up_tokenization_spaces`.
The chat template is `chat_template.jinja`, else `chat_template` in tokenizer_config.json (a
string, or named templates with a `default`). EOS ids are the tokenizer's EOS plus
`generation_config.json`'s `eos_token_id` (an int or a list), as vLLM stops on both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moeplane.workers.model.chat_template import render_chat_template
from tokenizers import AddedToken, Tokenizer, processors

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
TEMPLATE_FILE = "chat_template.jinja"
_NAMED = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class HFTokenizerError(ValueError):
    """A tokenizer directory that cannot be loaded; the message names the file."""


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken object."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HFTokenizerError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HFTokenizerError(f"{path}: must be a JSON object")
    return data


class HFTokenizer:
    """The `Tokenizer` protocol over a Hugging Face tokenizer directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / TOKENIZER_FILE
        if not path.is_file():
            raise HFTokenizerError(
                f"{path}: no tokenizer.json (moeplane needs a fast tokenizer's tokenizer.json; "
                "a slow-only or remote-code tokenizer is not supported)"
            )
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise HFTokenizerError(f"{path}: cannot be loaded by the tokenizers library ({exc})") from None
        config = _read_json(self.directory / TOKENIZER_CONFIG)
        self._add_configured_tokens(config)
        self.special_tokens: dict[str, str] = {}
        for key in _NAMED:
            text = _token_text(config.get(key))
            if text is not None:
                self.special_tokens[key] = text
        self._update_post_processor(config)
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False)) and (
            type(self._tok.model).__name__ != "BPE"  # transformers skips it for BPE
        )
        self.chat_template = self._template(config)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = self._id_of("bos_token")
        self.pad_id = self._id_of("pad_token")
        generation = _read_json(self.directory / GENERATION_CONFIG).get("eos_token_id")
        extra = generation if isinstance(generation, list) else [] if generation is None else [generation]
        own = self._id_of("eos_token")
        ids = [i for i in [own, *extra] if isinstance(i, int)]
        if not ids:
            raise HFTokenizerError(
                f"{self.directory}: no EOS token (tokenizer_config.json eos_token or generation_config.json "
                "eos_token_id)"
            )
        self.eos_id: int = ids[0]
        self.eos_ids: frozenset[int] = frozenset(ids)
        self.special_ids: frozenset[int] = frozenset(
            i for i, t in self._tok.get_added_tokens_decoder().items() if t.special
        )

    def _id_of(self, key: str) -> int | None:
        text = self.special_tokens.get(key)
        return None if text is None else self._tok.token_to_id(text)

    def _add_configured_tokens(self, config: dict[str, Any]) -> None:
        """Tokens in added_tokens_decoder or named as specials that tokenizer.json lacks (as
        transformers adds them)."""
        known = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        missing: list[AddedToken] = []
        for _, spec in sorted((config.get("added_tokens_decoder") or {}).items(), key=lambda kv: int(kv[0])):
            if isinstance(spec, dict) and spec.get("content") not in known:
                missing.append(AddedToken(
                    spec["content"], single_word=spec.get("single_word", False),
                    lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False),
                    normalized=spec.get("normalized", False), special=spec.get("special", True),
                ))
        for key in _NAMED:
            text = _token_text(config.get(key))
            if text is not None and text not in known and all(t.content != text for t in missing):
                missing.append(AddedToken(text, special=True, normalized=False))
        if missing:
            self._tok.add_tokens(missing)

    def _update_post_processor(self, config: dict[str, Any]) -> None:
        """As transformers 5: tokenizer.json's post-processor decides what `add_special_tokens`
        adds (tokenizer_config's add_bos_token/add_eos_token are dropped when tokenizer.json
        exists); with no post-processor, nothing is added."""
        if self._tok.post_processor is None:
            self._tok.post_processor = processors.TemplateProcessing(
                single="$A:0", pair="$A:0 $B:1", special_tokens=[]
            )

    def _template(self, config: dict[str, Any]) -> str | None:
        path = self.directory / TEMPLATE_FILE
        if path.is_file():
            return path.read_text()
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) else None

    # ---- the Tokenizer protocol ----------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self.clean_up_spaces else text

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Vocabulary strings of `ids` (byte-level BPE: the mapped-bytes form, e.g. 'Ġhello')."""
        return [self._tok.id_to_token(int(i)) or "" for i in ids]

    def token_text(self, token_id: int) -> str:
        """The decoded text of one token (specials included), as logprobs report it."""
        return self._tok.decode([int(token_id)], skip_special_tokens=False)

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special_ids

    def apply_chat_template(
        self, messages: Sequence[Any], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        if self.chat_template is None:
            raise HFTokenizerError(
                f"{self.directory}: the tokenizer has no chat template ({TEMPLATE_FILE} or chat_template in "
                f"{TOKENIZER_CONFIG})"
            )
        return render_chat_template(
            self.chat_template, messages, self.special_tokens, add_generation_prompt, **kwargs
        )

    def encode_chat(
        self, messages: Sequence[Any], add_generation_prompt: bool = True, add_special_tokens: bool = False,
        **kwargs: Any,
    ) -> list[int]:
        """transformers' `apply_chat_template(tokenize=True)`: the template writes BOS and the
        other special tokens as text, so it is tokenized without adding them again (unless
        `add_special_tokens`, vLLM's chat field of that name)."""
        text = self.apply_chat_template(messages, add_generation_prompt, **kwargs)
        return self.encode(text, add_special_tokens=add_special_tokens)


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (WordPiece-era space fixes)."""
    return (
        text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
        .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
        .replace(" 've", "'ve").replace(" 're", "'re")
    )
