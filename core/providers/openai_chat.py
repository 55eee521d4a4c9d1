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
Per-model needs (temperature range, ``max_completion_tokens``) come from the
model's quirk profile, never from tests on its name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

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
from core.providers.sse import parse_sse


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
            self.endpoint, "/chat/completions", body, self._headers(), request.model.id
        ) as lines:
            async for ev in parse_sse(lines):
                data = ev.data
                if data == "[DONE]":
                    if usage is not None:
                        yield UsageChunk(usage)
                    yield FinishChunk(finish)
                    return
                obj = event_object(self.endpoint, data)
                if obj.get("error"):
                    raise vendor_error(self.endpoint, None, obj, model=request.model.id)
                if obj.get("usage"):
                    usage = _usage(obj["usage"])
                for choice in obj.get("choices") or ():
                    if not isinstance(choice, dict):
                        continue
                    if choice.get("usage"):  # Moonshot
                        usage = _usage(choice["usage"])
                    delta = choice.get("delta") or {}
                    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                    if reasoning:
                        yield ReasoningChunk(reasoning)
                    content = delta.get("content")
                    if content:
                        yield TextChunk(content)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        raise truncated(self.endpoint, "no [DONE]")

    async def check(self) -> None:
        await get_json(self.endpoint, "/models", self._headers())

    async def aclose(self) -> None:
        return None
