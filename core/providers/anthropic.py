"""Anthropic Messages wire (https://docs.anthropic.com/en/api/messages-streaming).

``x-api-key`` + ``anthropic-version: 2023-06-01``; ``max_tokens`` required;
``system`` is top-level. Events: ``message_start`` (input usage),
``content_block_delta`` (``text_delta`` / ``thinking_delta``), ``message_delta``
(stop_reason, output usage), ``message_stop``; ``ping`` anywhere; ``event:
error`` can arrive after HTTP 200 (``overloaded_error``). A stream without
``message_stop`` is truncated, and so is one with data that is not a JSON
object (:func:`core.providers.http.event_object`, shared with every wire).

Structured output (quirk ``structured = "tool"``,
https://docs.anthropic.com/en/docs/build-with-claude/tool-use): one tool whose
``input_schema`` is the schema, forced by ``tool_choice: {"type": "tool"}``. Its
input streams as ``content_block_delta`` with ``input_json_delta`` /
``partial_json`` (yielded as text, so the caller reads the JSON text as it comes),
and the message ends with stop_reason ``tool_use``, a normal end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from core.providers.base import (
    ChatRequest,
    Chunk,
    Endpoint,
    FinishChunk,
    ReasoningChunk,
    TextChunk,
    Usage,
    UsageChunk,
)
from core.providers.http import event_object, get_json, open_stream, truncated, vendor_error

API_VERSION = "2023-06-01"


class _Delta(msgspec.Struct, gc=False):
    type: Any = None
    text: Any = None
    thinking: Any = None
    stop_reason: Any = None
    partial_json: Any = None


class _Event(msgspec.Struct, gc=False):
    """The fields of an event that Parley reads (the rest is skipped unread)."""

    type: Any = None
    delta: _Delta | None = None
    message: Any = None
    usage: Any = None


_decode_event = msgspec.json.Decoder(_Event).decode


def _event(endpoint: Endpoint, data: str) -> _Event:
    """An event's fields. The usual shape decodes straight into :class:`_Event`; anything
    else is read as a JSON object first (which fails the turn if it is not one), and a
    delta that is not an object is skipped."""
    try:
        return _decode_event(data)
    except msgspec.DecodeError:
        pass
    obj = event_object(endpoint, data)
    d = obj.get("delta")
    delta = (
        _Delta(d.get("type"), d.get("text"), d.get("thinking"), d.get("stop_reason"), d.get("partial_json"))
        if isinstance(d, dict) else None
    )
    return _Event(obj.get("type"), delta, obj.get("message"), obj.get("usage"))


def build_body(request: ChatRequest) -> dict[str, Any]:
    profile = request.model.profile
    body: dict[str, Any] = {
        "model": request.model.id,
        "max_tokens": request.max_tokens,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
    }
    if request.system:
        body["system"] = request.system
    if profile.temperature_range is not None:
        temp = request.temperature if request.temperature is not None else profile.default_temperature
        if temp is not None:
            body["temperature"] = temp
    s = request.structured
    if s is not None and profile.structured == "tool":
        body["tools"] = [{
            "name": s.name,
            "description": s.description or f"Record the answer as one {s.name} object.",
            "input_schema": s.schema,
        }]
        body["tool_choice"] = {"type": "tool", "name": s.name}
    body.update(profile.extra_body)
    return body


class AnthropicWire:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def _headers(self) -> dict[str, str]:
        h = {"anthropic-version": API_VERSION, "accept": "text/event-stream"}
        if self.endpoint.key is not None:
            h["x-api-key"] = self.endpoint.key.get_secret_value()
        return h

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        usage = Usage()
        stop: str | None = None
        async with open_stream(
            self.endpoint, "/messages", build_body(request), self._headers(), request
        ) as events:
            async for batch in events:
                for ev in batch:
                    obj = _event(self.endpoint, ev.data)
                    kind = obj.type or ev.event
                    if kind == "content_block_delta":
                        delta = obj.delta
                        if delta is None:
                            continue
                        if delta.type == "text_delta" and delta.text:
                            yield TextChunk(delta.text)
                        elif delta.type == "thinking_delta" and delta.thinking:
                            yield ReasoningChunk(delta.thinking)
                        elif delta.type == "input_json_delta" and delta.partial_json:
                            yield TextChunk(delta.partial_json)  # the forced tool's JSON input
                    elif kind == "message_start":
                        u = (obj.message if isinstance(obj.message, dict) else {}).get("usage") or {}
                        usage.input_tokens = int(u.get("input_tokens") or 0) + int(
                            u.get("cache_read_input_tokens") or 0
                        ) + int(u.get("cache_creation_input_tokens") or 0)
                        usage.cached_tokens = int(u.get("cache_read_input_tokens") or 0)
                        usage.output_tokens = int(u.get("output_tokens") or 0)
                    elif kind == "message_delta":
                        u = obj.usage or {}
                        if "output_tokens" in u:
                            usage.output_tokens = int(u["output_tokens"] or 0)
                        stop = (obj.delta.stop_reason if obj.delta is not None else None) or stop
                    elif kind == "message_stop":
                        yield UsageChunk(usage)
                        yield FinishChunk(stop)
                        return
                    elif kind == "error" or ev.event == "error":
                        body = event_object(self.endpoint, ev.data)
                        raise vendor_error(self.endpoint, None, body, model=request.model.id)
        raise truncated(self.endpoint, "no message_stop")

    async def check(self) -> None:
        await get_json(self.endpoint, "/models", self._headers())

    async def aclose(self) -> None:
        return None
