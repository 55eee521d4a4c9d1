"""One server-sent-events parser for every wire.

Follows the WHATWG event-stream rules that matter to LLM APIs: ``event:`` and
``data:`` fields, multi-line data joined with ``\\n``, ``:`` comment lines
(DeepSeek's ``: keep-alive``, OpenRouter's ``: OPENROUTER PROCESSING``) ignored,
an event dispatched on a blank line, and never one whose data is empty. A bare
JSON line (some gateways send an error body without ``data:``) is treated as
data. What the data must be is the wires' business
(:func:`core.providers.http.event_object`).

:class:`SSEDecoder` is the streaming form the HTTP wires use: bytes in as they
come off the socket, the events they complete out, with no task switch or
generator step per line. :func:`parse_sse` applies the same rules to lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    event: str
    data: str


class LineTooLong(Exception):
    """A line longer than the decoder's ``max_line`` (the caller says whose stream it was)."""


class _Fields:
    """The event being assembled, line by line."""

    __slots__ = ("event", "data")

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []

    def line(self, line: str) -> SSEEvent | None:
        """Take one line (without its end); the event it completes, if any."""
        if not line:
            data = self.data
            done = SSEEvent(self.event or "message", "\n".join(data)) if data and (len(data) > 1 or data[0]) else None
            self.event, self.data = "", []
            return done
        if line[0] == ":":
            return None
        field, sep, value = line.partition(":")
        if not sep:
            if line.lstrip().startswith("{"):
                self.data.append(line)
            return None
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self.data.append(value)
        elif field == "event":
            self.event = value
        # id: and retry: are irrelevant for one-shot completions.
        return None

    def end(self) -> SSEEvent | None:
        """A final event without its blank line."""
        data = self.data
        self.data = []
        if data and (len(data) > 1 or data[0]):
            return SSEEvent(self.event or "message", "\n".join(data))
        return None


class SSEDecoder:
    """Incremental: :meth:`feed` the body's bytes as they arrive, get the completed events.

    Lines end with ``\\n``, ``\\r\\n`` or ``\\r``; UTF-8 never has those bytes inside a
    character, so whole lines are decoded (invalid bytes replaced). A line (or an
    unfinished one) longer than ``max_line`` bytes raises :class:`LineTooLong`."""

    __slots__ = ("max_line", "_buf", "_cr", "_fields")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = b""
        self._cr = False  # the last read ended with \r: a \n first in the next one belongs to it
        self._fields = _Fields()

    def feed(self, data: bytes) -> list[SSEEvent]:
        if self._cr:
            self._cr = False
            if data[:1] == b"\n":
                data = data[1:]
        if self._buf:
            data = self._buf + data
        if b"\r" in data:
            if data[-1:] == b"\r":
                self._cr = True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, self._buf = data.split(b"\n")
        if len(self._buf) > self.max_line:
            raise LineTooLong
        out: list[SSEEvent] = []
        take = self._fields.line
        for raw in lines:
            if len(raw) > self.max_line:
                raise LineTooLong
            ev = take(raw.decode("utf-8", "replace"))
            if ev is not None:
                out.append(ev)
        return out

    def end(self) -> list[SSEEvent]:
        """The body ended: its unfinished last line, and an event left without its blank line."""
        out = []
        if self._buf:
            ev = self._fields.line(self._buf.decode("utf-8", "replace"))
            self._buf = b""
            if ev is not None:
                out.append(ev)
        ev = self._fields.end()
        if ev is not None:
            out.append(ev)
        return out


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    fields = _Fields()
    async for raw in lines:
        ev = fields.line(raw.rstrip("\r\n"))
        if ev is not None:
            yield ev
    ev = fields.end()
    if ev is not None:
        yield ev
