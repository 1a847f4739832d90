"""A request resumed on another decode group after tokens were sent: the frontend re-derives the
text from all output ids, so a character whose UTF-8 bytes straddle the failure is not lost, and a
stop string spanning it still stops the request. (Found by test_stack_faults' decode-death test:
the resumed stream was missing one character when the random model's bytes split a character.)
"""

from __future__ import annotations

import pytest
from moeplane.workers.frontend.pipeline import Chunk, _rederive
from moeplane.workers.model.tokenizer import ByteTokenizer
from moeplane.workers.serving.sequence import FinishReason
from moeplane.workers.serving.text import TextStream

pytestmark = [pytest.mark.reliability, pytest.mark.unit]

TOK = ByteTokenizer()


def ids(text: str) -> list[int]:
    return TOK.encode(text)[1:]  # no BOS: output ids


def test_a_character_split_across_the_failure_is_not_lost() -> None:
    out = ids("aé b")  # a, 0xC3, 0xA9, ' ', b
    first = TextStream(TOK)
    sent = first.update(out[:2]).text  # the first group sent 'a' and held back 0xC3
    assert sent == "a"
    # The new group decodes only what it makes: 0xA9 alone is not a character, so it sends ''.
    resumed = TextStream(TOK, emitted=sent)
    texts = []
    for n in range(3, len(out) + 1):
        last = n == len(out)
        chunk = _rederive(resumed, out[:n], Chunk("", (out[n - 1],), FinishReason.LENGTH if last else None))
        texts.append(chunk.text)
    assert sent + "".join(texts) == "aé b"


def test_a_stop_string_spanning_the_failure_stops_the_request() -> None:
    out = ids("xxSTOPyy")
    sent = TextStream(TOK, stop=["STOP"]).update(out[:4]).text  # 'xx' sent, 'ST' held for the stop
    assert sent == "xx"
    resumed = TextStream(TOK, stop=["STOP"], emitted=sent)
    chunk = _rederive(resumed, out[:5], Chunk("O", (out[4],)))
    assert chunk.finish_reason is None and chunk.text == ""
    chunk = _rederive(resumed, out[:6], Chunk("P", (out[5],)))
    assert chunk.finish_reason is FinishReason.STOP and chunk.text == ""
