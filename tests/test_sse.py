"""The incremental SSE decoder gives the same events as the line parser, however the body is split.

Bodies are drawn from the pieces that LLM APIs really send (data and event fields, multi-line
data, comments, bare JSON lines, blank lines) with any of the three line ends, non-ASCII text,
and no final blank line; reads split anywhere, including inside a ``\\r\\n`` and inside a
UTF-8 character.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.providers.sse import LineTooLong, SSEDecoder, SSEEvent, parse_sse

LINES = st.sampled_from(
    [
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hé\"}}]}",
        "data: [DONE]",
        "data:",
        "data: ",
        "data:no space",
        "event: message_start",
        "event: content_block_delta",
        ": keep-alive",
        ": OPENROUTER PROCESSING",
        "{\"error\": {\"message\": \"über\"}}",
        "id: 7",
        "retry: 100",
        "data: multi",
        "data: line ✓ 🙂",
        "",
    ]
)
ENDS = st.sampled_from(["\n", "\r\n", "\r"])


def reference(text: str) -> list[SSEEvent]:
    """The line parser over the body split into lines (any of the three line ends)."""

    async def lines():  # type: ignore[no-untyped-def]
        for line in text.splitlines(keepends=True):
            yield line

    async def collect() -> list[SSEEvent]:
        return [ev async for ev in parse_sse(lines())]

    return asyncio.run(collect())


def decoded(body: bytes, cuts: list[int]) -> list[SSEEvent]:
    decoder = SSEDecoder(max_line=1 << 16)
    out: list[SSEEvent] = []
    start = 0
    for cut in sorted(set(cuts)):
        out += decoder.feed(body[start:cut])
        start = cut
    out += decoder.feed(body[start:])
    return out + decoder.end()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(LINES, ENDS), max_size=30), st.booleans(), st.data())
def test_any_split_of_any_body_gives_the_line_parsers_events(
    lines: list[tuple[str, str]], trailing: bool, data: st.DataObject
) -> None:
    text = "".join(line + end for line, end in lines)
    if trailing:
        text += "data: unterminated"
    body = text.encode()
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    assert decoded(body, cuts) == reference(text)


def test_a_crlf_split_between_reads_is_one_line_end() -> None:
    body = b"data: a\r\ndata: b\r\n\r\n"  # one event of two lines
    assert decoded(body, [8]) == [SSEEvent("message", "a\nb")]  # cut between \r and \n
    assert decoded(body, [8, 9, 10, 17, 18]) == [SSEEvent("message", "a\nb")]
    # a lone \r ends a line too, and a following read beginning with text is not eaten
    assert decoded(b"data: x\r\rdata: y\r\r", [8]) == [SSEEvent("message", "x"), SSEEvent("message", "y")]


def test_a_character_split_between_reads_is_decoded_whole() -> None:
    body = "data: ✓🙂\n\n".encode()
    for cut in range(len(body) + 1):
        assert decoded(body, [cut]) == [SSEEvent("message", "✓🙂")]


def test_a_line_longer_than_the_limit_is_refused_even_unfinished() -> None:
    decoder = SSEDecoder(max_line=16)
    with pytest.raises(LineTooLong):
        decoder.feed(b"data: " + b"x" * 40)  # no line end yet
    decoder = SSEDecoder(max_line=16)
    with pytest.raises(LineTooLong):
        decoder.feed(b"data: " + b"x" * 40 + b"\n\n")
