"""The wire protocols Parley speaks, as one table: ``{name: factory}``.

A catalog row (or a row in the user's ``PARLEY_CONFIG``) names its wire; the
catalog is validated against this table, so an unknown name is an error that
lists the known ones, never a silent fallback to another protocol.
"""

from __future__ import annotations

from collections.abc import Callable

from core.providers.anthropic import AnthropicWire
from core.providers.base import Endpoint, Wire
from core.providers.local import LlamaCppWire
from core.providers.openai_chat import OpenAIChatWire

WIRES: dict[str, Callable[[Endpoint], Wire]] = {
    "openai_chat": OpenAIChatWire,  # Chat Completions: OpenAI and every compatible API
    "anthropic_messages": AnthropicWire,  # Anthropic Messages
    "llama_cpp": LlamaCppWire,  # a GGUF model in-process (llama_cpp imported on first use)
}


def make_wire(endpoint: Endpoint) -> Wire:
    return WIRES[endpoint.spec.wire](endpoint)
