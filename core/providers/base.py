"""What every wire speaks: a chat request in, a typed async stream of chunks out.

A *wire* knows one protocol (OpenAI Chat Completions, Anthropic Messages, an
in-process llama.cpp model). It is built from a :class:`Endpoint` (who/where:
base URL, key, catalog row) and knows nothing of retries, storage or
rendering. Retries wrap a wire in :mod:`core.providers.retry`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import SecretStr

if TYPE_CHECKING:
    from core.providers.spec import ModelSpec, ProviderSpec


@dataclass(slots=True)
class Message:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Structured:
    """Ask for one JSON object matching ``schema`` (a JSON Schema) instead of free text.

    Each wire sends it the way its protocol can, as the model's quirk profile says
    (``QuirkProfile.structured``); a wire that cannot constrain output ignores it, and
    the caller then reads the text with a tolerant parser. Either way the answer still
    streams as text chunks (the JSON text when constrained).
    """

    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(slots=True)
class ChatRequest:
    model: ModelSpec
    messages: list[Message]
    system: str | None = None
    temperature: float | None = None
    max_tokens: int = 1024
    #: Seconds a stream's bytes may gather between two reads (0: every read as it comes).
    #: The turn sets it once text has started (core/turn.py); an HTTP wire reads it before
    #: each read, so one wake-up carries every chunk that arrived meanwhile.
    gather: float = 0.0
    #: Structured output wanted (a consensus ballot); None: free text.
    structured: Structured | None = None


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


@dataclass(slots=True)
class TextChunk:
    text: str


@dataclass(slots=True)
class ReasoningChunk:
    """Thinking text (``reasoning_content``); stored apart, never mixed into the answer."""

    text: str


@dataclass(slots=True)
class UsageChunk:
    usage: Usage


@dataclass(slots=True)
class FinishChunk:
    reason: str | None = None


Chunk = TextChunk | ReasoningChunk | UsageChunk | FinishChunk


class HTTPClient(Protocol):
    def stream(
        self, method: str, url: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        """An async context manager yielding a :class:`core.providers.http.Reply`."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class Endpoint:
    """A provider row resolved against the environment."""

    spec: ProviderSpec
    base_url: str
    key: SecretStr | None
    http: HTTPClient
    extra: dict[str, str] = field(default_factory=dict)
    #: What sets ``base_url``, for error messages (see :meth:`ProviderSpec.url_setting`).
    url_setting: str = ""

    def url_hint(self) -> str:
        return self.url_setting or self.spec.url_setting(env_set=True)


class Wire(Protocol):
    endpoint: Endpoint

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Stream one answer. Must end with a FinishChunk, or raise ParleyError
        (kind ``truncated`` when the stream stops before its terminator)."""
        ...

    async def check(self) -> None:
        """Cheap health probe (``GET /models``); raise ParleyError when unhealthy."""
        ...

    async def aclose(self) -> None: ...
