"""One server-sent-events parser for every wire.

Follows the WHATWG event-stream rules that matter to LLM APIs: ``event:`` and
``data:`` fields, multi-line data joined with ``\\n``, ``:`` comment lines
(DeepSeek's ``: keep-alive``, OpenRouter's ``: OPENROUTER PROCESSING``) ignored,
an event dispatched on a blank line, and never one whose data is empty. A bare
JSON line (some gateways send an error body without ``data:``) is treated as
data. What the data must be is the wires' business
(:func:`core.providers.http.event_object`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    event: str
    data: str


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    event = ""
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data and (len(data) > 1 or data[0]):
                yield SSEEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line[0] == ":":
            continue
        field, sep, value = line.partition(":")
        if not sep:
            if line.lstrip().startswith("{"):
                data.append(line)
            continue
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        # id: and retry: are irrelevant for one-shot completions.
    if data and (len(data) > 1 or data[0]):  # a final event without its blank line
        yield SSEEvent(event or "message", "\n".join(data))
