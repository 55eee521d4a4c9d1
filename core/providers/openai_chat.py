"""OpenAI Chat Completions wire: serves every OpenAI-compatible provider.

Stream facts handled here (https://platform.openai.com/docs/api-reference/chat-streaming):
- ``data: {json}`` chunks, ending with ``data: [DONE]``; a stream that stops
  before ``[DONE]`` is *truncated*, never a success.
- ``stream_options.include_usage``: the last chunk has ``"choices": []`` and
  top-level ``usage``. Moonshot instead puts ``usage`` inside ``choices[0]`` of
  the final chunk. ``choices`` may be empty or null on any chunk.
- ``reasoning_content`` (Moonshot thinking models, DeepSeek reasoner) or
  ``reasoning`` (OpenRouter, Groq) is thinking text, kept apart from the answer.
- ``data: {"error": ...}`` after HTTP 200 is an error, classified by its type;
  data that is not a JSON object ends the turn (one policy for every wire,
  :func:`core.providers.http.event_object`).
Per-model needs (temperature range, ``max_completion_tokens``, how a structured
request is sent: ``response_format`` json_schema or json_object) come from the
model's quirk profile, never from tests on its name. A structured answer streams
as ordinary content deltas carrying the JSON text.
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


def _usage(u: dict[str, Any]) -> Usage:
    details = u.get("prompt_tokens_details") or {}
    cached = (
        details.get("cached_tokens")
        or u.get("cached_tokens")  # Moonshot
        or u.get("prompt_cache_hit_tokens")  # DeepSeek
        or 0
    )
    return Usage(
        input_tokens=int(u.get("prompt_tokens") or 0),
        output_tokens=int(u.get("completion_tokens") or 0),
        cached_tokens=int(cached),
    )


class _Delta(msgspec.Struct, gc=False):
    content: Any = None
    reasoning_content: Any = None
    reasoning: Any = None


class _Choice(msgspec.Struct, gc=False):
    delta: _Delta | None = None
    finish_reason: Any = None
    usage: Any = None


class _Event(msgspec.Struct, gc=False):
    """The fields of a chunk that Parley reads (the rest is skipped unread)."""

    choices: list[_Choice | None] | None = None
    usage: Any = None
    error: Any = None


_decode_event = msgspec.json.Decoder(_Event).decode


def _event(endpoint: Endpoint, data: str) -> _Event:
    """A chunk's fields. The usual shape decodes straight into :class:`_Event`; anything
    else is read as a JSON object first (which fails the turn if it is not one), and
    choices or deltas that are not objects are skipped."""
    try:
        return _decode_event(data)
    except msgspec.DecodeError:
        pass
    obj = event_object(endpoint, data)
    choices = obj.get("choices")
    return _Event(
        choices=[
            _Choice(_Delta(d.get("content"), d.get("reasoning_content"), d.get("reasoning"))
                    if isinstance(d := c.get("delta"), dict) else None,
                    c.get("finish_reason"), c.get("usage"))
            for c in choices if isinstance(c, dict)
        ] if isinstance(choices, list) else None,
        usage=obj.get("usage"),
        error=obj.get("error"),
    )


def build_body(request: ChatRequest) -> dict[str, Any]:
    profile = request.model.profile
    messages: list[dict[str, str]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend({"role": m.role, "content": m.content} for m in request.messages)
    body: dict[str, Any] = {"model": request.model.id, "messages": messages, "stream": True}
    if profile.stream_usage:
        body["stream_options"] = {"include_usage": True}
    body[profile.max_tokens_param] = request.max_tokens
    if profile.temperature_range is not None:
        temp = request.temperature
        if temp is None:
            temp = profile.default_temperature
        if temp is not None:
            body["temperature"] = temp
    if request.structured is not None:
        s = request.structured
        if profile.structured == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": s.name, "schema": s.schema, "strict": True},
            }
        elif profile.structured == "json_object":  # the schema is in the caller's prompt
            body["response_format"] = {"type": "json_object"}
    body.update(profile.extra_body)
    return body


class OpenAIChatWire:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def _headers(self) -> dict[str, str]:
        h = {"accept": "text/event-stream"}
        if self.endpoint.key is not None:
            h["authorization"] = f"Bearer {self.endpoint.key.get_secret_value()}"
        return h

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        body = build_body(request)
        usage: Usage | None = None
        finish: str | None = None
        async with open_stream(
            self.endpoint, "/chat/completions", body, self._headers(), request
        ) as events:
            async for batch in events:
                for ev in batch:
                    data = ev.data
                    if data == "[DONE]":
                        if usage is not None:
                            yield UsageChunk(usage)
                        yield FinishChunk(finish)
                        return
                    chunk = _event(self.endpoint, data)
                    if chunk.error:
                        obj = event_object(self.endpoint, data)
                        raise vendor_error(self.endpoint, None, obj, model=request.model.id)
                    if chunk.usage:
                        usage = _usage(chunk.usage)
                    for choice in chunk.choices or ():
                        if choice is None:
                            continue
                        if choice.usage:  # Moonshot
                            usage = _usage(choice.usage)
                        delta = choice.delta
                        if delta is not None:
                            reasoning = delta.reasoning_content or delta.reasoning
                            if reasoning:
                                yield ReasoningChunk(reasoning)
                            if delta.content:
                                yield TextChunk(delta.content)
                        if choice.finish_reason:
                            finish = choice.finish_reason
        raise truncated(self.endpoint, "no [DONE]")

    async def check(self) -> None:
        await get_json(self.endpoint, "/models", self._headers())

    async def aclose(self) -> None:
        return None
