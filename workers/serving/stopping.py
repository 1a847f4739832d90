"""When a request on a rank stops, and what text it releases: vLLM's rules (no torch).

- EOS (unless `ignore_eos`) and `stop_token_ids` end a request once it has `min_tokens` outputs; the
  stop token counts as an output token but its text is left out unless
  `include_stop_str_in_output` (vLLM's detokenizer).
- Stop strings count only after `min_tokens` outputs; the text is cut before the stop string, or
  after it with `include_stop_str_in_output`. The stop string or token id is the `stop_reason`.
- `max_tokens` and the model's length end it with LENGTH.
- Text is decoded with special tokens dropped, or written out when `skip_special_tokens` is false.

Outputs of an earlier attempt (`output_offset`, a request resumed after a failure) count towards
`min_tokens` as they do for sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeplane.workers.serving.sequence import FinishReason
from moeplane.workers.serving.sequence import Sequence as Seq
from moeplane.workers.serving.text import TextStream, TokenDecoder


@dataclass(frozen=True)
class Step:
    """What one new token does to a request."""

    finish_reason: FinishReason | None
    text: str  # newly released text
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it


class StopChecker:
    """The text streams and stop rules of the requests on one rank."""

    def __init__(
        self, tokenizer: TokenDecoder, max_model_len: int, eos_ids: frozenset[int] | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = frozenset({tokenizer.eos_id}) if eos_ids is None else eos_ids
        self.max_model_len = max_model_len
        self._texts: dict[str, TextStream] = {}
        self._unarmed: set[str] = set()  # requests whose stop strings wait for min_tokens

    def add(self, seq: Seq) -> None:
        """Start `seq`'s text; output tokens it already carries (the prefill's first token) count as
        released."""
        p = seq.sampling
        # Armed when the next token's check may stop on a string (vLLM: outputs > min_tokens).
        armed = p.output_offset + seq.num_output_tokens >= p.min_tokens
        stream = TextStream(
            self.tokenizer, p.stop if armed else (), skip_special_tokens=p.skip_special_tokens
        )
        if not armed and p.stop:
            self._unarmed.add(seq.request_id)
        if seq.num_output_tokens:
            stream.update(seq.output_token_ids)
        self._texts[seq.request_id] = stream

    def drop(self, request_id: str) -> None:
        self._texts.pop(request_id, None)
        self._unarmed.discard(request_id)

    def check(self, seq: Seq, token: int) -> Step:
        """`token` was just appended to `seq`."""
        p, rid = seq.sampling, seq.request_id
        stream = self._texts[rid]
        output = seq.output_token_ids
        num_out = p.output_offset + seq.num_output_tokens
        if num_out >= p.min_tokens:
            is_eos = token in self.eos_ids and not p.ignore_eos
            if is_eos or token in p.stop_token_ids:
                text = stream.flush(output if p.include_stop_str_in_output else output[:-1])
                return Step(FinishReason.STOP, text, None if is_eos else token)
        if rid in self._unarmed and num_out > p.min_tokens:
            self._unarmed.discard(rid)
            stream = self._texts[rid] = TextStream(
                self.tokenizer, p.stop, emitted=stream.emitted, skip_special_tokens=p.skip_special_tokens
            )
        delta = stream.update(output)
        if delta.stopped:
            cut = len(stream.emitted)
            full = self.tokenizer.decode(output, skip_special_tokens=p.skip_special_tokens)
            stop = next((s for s in p.stop if full.startswith(s, cut)), "")
            text = delta.text + (stop if p.include_stop_str_in_output else "")
            return Step(FinishReason.STOP, text, stop or None)
        if seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return Step(FinishReason.LENGTH, delta.text + stream.flush(output))
        return Step(None, delta.text)
