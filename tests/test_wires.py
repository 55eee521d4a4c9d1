"""Wire-level tests with httpx.MockTransport: exact bodies in, exact chunks out."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import SecretStr

from core.errors import ErrorKind, ParleyError
from core.providers.anthropic import AnthropicWire
from core.providers.base import (
    ChatRequest,
    Endpoint,
    FinishChunk,
    Message,
    ReasoningChunk,
    TextChunk,
    Usage,
    UsageChunk,
)
from core.providers.catalog import load_catalog
from core.providers.http import HttpxClient
from core.providers.openai_chat import OpenAIChatWire
from core.providers.retry import RetryPolicy, stream_with_retries

CAT = load_catalog()


def sse(*events: str) -> bytes:
    return "".join(events).encode()


def data(obj: object) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def chunk(content: str | None = None, *, finish: str | None = None, reasoning: str | None = None,
          usage: dict | None = None) -> dict:
    delta: dict = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    choice: dict = {"index": 0, "delta": delta, "finish_reason": finish}
    if usage:
        choice["usage"] = usage
    return {"id": "x", "object": "chat.completion.chunk", "choices": [choice]}


def endpoint(pid: str, handler, key: str | None = "sk-test-key-123456") -> Endpoint:
    spec = CAT.providers[pid]
    client = HttpxClient(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    return Endpoint(spec, spec.base_url or "", SecretStr(key) if key else None, client)


def request(pid: str, model: str | None = None, **kw) -> ChatRequest:
    spec = CAT.providers[pid]
    return ChatRequest(model=spec.models[model or spec.default_model],
                       messages=[Message("user", "hello")], system="be brief", **kw)


async def collect(wire, req):
    return [c async for c in wire.stream(req)]


# --- OpenAI-compatible -----------------------------------------------------------------
async def test_openai_stream_with_usage_comments_and_empty_choices() -> None:
    seen = {}

    def handler(req: httpx.Request) -> httpx.Response:
        seen["body"] = json.loads(req.content)
        seen["auth"] = req.headers["authorization"]
        body = sse(
            ": keep-alive\n\n",
            data(chunk("Hel")),
            data({"id": "x", "choices": []}),
            data({"id": "x", "choices": None}),
            data(chunk("lo", finish="stop")),
            data({"id": "x", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2,
                                                      "prompt_tokens_details": {"cached_tokens": 4}}}),
            "data: [DONE]\n\n",
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    got = await collect(OpenAIChatWire(endpoint("openai", handler)), request("openai"))
    assert [c.text for c in got if isinstance(c, TextChunk)] == ["Hel", "lo"]
    assert UsageChunk(Usage(9, 2, 4)) in got
    assert got[-1] == FinishChunk("stop")
    body = seen["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert "max_completion_tokens" in body  # quirk profile of gpt-4.1
    assert seen["auth"] == "Bearer sk-test-key-123456"


async def test_moonshot_usage_inside_choice_and_reasoning_kept_apart() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(
            data(chunk(reasoning="thinking...")),
            data(chunk("Answer")),
            data(chunk(finish="stop", usage={"prompt_tokens": 5, "completion_tokens": 1, "cached_tokens": 2})),
            "data: [DONE]\n\n",
        ))

    got = await collect(OpenAIChatWire(endpoint("kimi", handler)), request("kimi", "kimi-k2-thinking"))
    assert ReasoningChunk("thinking...") in got
    assert [c.text for c in got if isinstance(c, TextChunk)] == ["Answer"]
    assert UsageChunk(Usage(5, 1, 2)) in got


async def test_quirks_temperature_default_and_rejected_params() -> None:
    bodies = []

    def handler(req: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(req.content))
        return httpx.Response(200, content=sse(data(chunk("x", finish="stop")), "data: [DONE]\n\n"))

    await collect(OpenAIChatWire(endpoint("kimi", handler)), request("kimi"))
    assert bodies[-1]["temperature"] == 0.6  # K2 default
    await collect(OpenAIChatWire(endpoint("openai", handler)), request("openai", "o4-mini", temperature=0.5))
    assert "temperature" not in bodies[-1] and "max_completion_tokens" in bodies[-1]
    await collect(OpenAIChatWire(endpoint("deepseek", handler)), request("deepseek"))
    assert "max_tokens" in bodies[-1]


async def test_stream_without_done_is_truncated() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(data(chunk("partial"))))

    wire = OpenAIChatWire(endpoint("openai", handler))
    got = []
    with pytest.raises(ParleyError) as ei:
        async for c in wire.stream(request("openai")):
            got.append(c)
    assert ei.value.kind == ErrorKind.TRUNCATED
    assert got == [TextChunk("partial")]


async def test_error_inside_200_stream() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(
            data(chunk("a")), data({"error": {"message": "boom", "type": "engine_overloaded_error"}})))

    with pytest.raises(ParleyError) as ei:
        await collect(OpenAIChatWire(endpoint("kimi", handler)), request("kimi"))
    assert ei.value.kind == ErrorKind.OVERLOADED


async def test_http_error_bodies_are_classified() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "Invalid Authentication",
                                                   "type": "invalid_authentication_error"}})

    with pytest.raises(ParleyError) as ei:
        await collect(OpenAIChatWire(endpoint("kimi", handler)), request("kimi"))
    assert ei.value.kind == ErrorKind.AUTH and "MOONSHOT_BASE_URL" in ei.value.message


async def test_connect_error_is_unreachable() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    with pytest.raises(ParleyError) as ei:
        await collect(OpenAIChatWire(endpoint("openai", handler)), request("openai"))
    assert ei.value.kind == ErrorKind.UNREACHABLE and "OPENAI_BASE_URL" in ei.value.message


# --- Anthropic -----------------------------------------------------------------------------
def ev(name: str, obj: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n"


async def test_anthropic_event_sequence() -> None:
    seen = {}

    def handler(req: httpx.Request) -> httpx.Response:
        seen["headers"] = dict(req.headers)
        seen["body"] = json.loads(req.content)
        return httpx.Response(200, content=sse(
            ev("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 12, "cache_read_input_tokens": 3, "output_tokens": 1}}}),
            ev("content_block_start", {"type": "content_block_start", "index": 0}),
            ev("ping", {"type": "ping"}),
            ev("content_block_delta", {"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            ev("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}),
            ev("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": " there"}}),
            ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}),
            ev("message_stop", {"type": "message_stop"}),
        ))

    got = await collect(AnthropicWire(endpoint("anthropic", handler)), request("anthropic"))
    assert [c.text for c in got if isinstance(c, TextChunk)] == ["Hi", " there"]
    assert ReasoningChunk("hmm") in got
    assert UsageChunk(Usage(15, 7, 3)) in got
    assert got[-1] == FinishChunk("end_turn")
    assert seen["headers"]["x-api-key"] == "sk-test-key-123456"
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert seen["body"]["system"] == "be brief" and seen["body"]["max_tokens"] > 0


async def test_anthropic_error_event_after_200() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(
            ev("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}),
            ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ))

    with pytest.raises(ParleyError) as ei:
        await collect(AnthropicWire(endpoint("anthropic", handler)), request("anthropic"))
    assert ei.value.kind == ErrorKind.OVERLOADED


async def test_anthropic_without_message_stop_is_truncated() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(
            ev("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}})))

    with pytest.raises(ParleyError) as ei:
        await collect(AnthropicWire(endpoint("anthropic", handler)), request("anthropic"))
    assert ei.value.kind == ErrorKind.TRUNCATED


# --- retries ---------------------------------------------------------------------------------
async def _retry_run(statuses: list[tuple[int, dict, dict]], pid: str = "openai", attempts: int = 3):
    calls = []
    sleeps: list[float] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) <= len(statuses):
            status, body, headers = statuses[len(calls) - 1]
            return httpx.Response(status, json=body, headers=headers)
        return httpx.Response(200, content=sse(data(chunk("ok", finish="stop")), "data: [DONE]\n\n"))

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    wire = OpenAIChatWire(endpoint(pid, handler))
    out = []
    err = None
    try:
        async for c in stream_with_retries(wire, request(pid), RetryPolicy(attempts=attempts), sleep=fake_sleep):
            out.append(c)
    except ParleyError as e:
        err = e
    return calls, sleeps, out, err


async def test_rate_limit_is_retried_honouring_retry_after_ms() -> None:
    calls, sleeps, out, err = await _retry_run(
        [(429, {"error": {"type": "requests", "code": "rate_limit_exceeded"}}, {"retry-after-ms": "250"})])
    assert err is None and len(calls) == 2 and sleeps == [0.25]
    assert TextChunk("ok") in out


async def test_quota_429_is_requested_exactly_once() -> None:
    calls, sleeps, out, err = await _retry_run(
        [(429, {"error": {"type": "exceeded_current_quota_error", "message": "no money"}}, {})], "kimi")
    assert len(calls) == 1 and sleeps == [] and err.kind == ErrorKind.QUOTA_EXHAUSTED


async def test_auth_401_is_never_retried() -> None:
    calls, _, _, err = await _retry_run([(401, {"error": {"message": "bad key"}}, {})])
    assert len(calls) == 1 and err.kind == ErrorKind.AUTH


async def test_retries_are_bounded() -> None:
    calls, sleeps, _, err = await _retry_run([(503, {}, {})] * 5, attempts=3)
    assert len(calls) == 3 and len(sleeps) == 2 and err.kind == ErrorKind.OVERLOADED
    assert all(0 <= s <= 8 for s in sleeps)


async def test_no_retry_after_first_token() -> None:
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, content=sse(
            data(chunk("shown")), data({"error": {"message": "x", "type": "engine_overloaded_error"}})))

    wire = OpenAIChatWire(endpoint("kimi", handler))
    out = []
    with pytest.raises(ParleyError):
        async for c in stream_with_retries(wire, request("kimi"), RetryPolicy(attempts=3)):
            out.append(c)
    assert len(calls) == 1 and out == [TextChunk("shown")]


async def test_line_splitting_across_reads_with_crlf_and_utf8() -> None:
    """Bytes arrive in arbitrary pieces: CRLF split across reads, multi-byte characters split."""
    payload = (data(chunk("héllo ✓")) + data(chunk(" wörld", finish="stop")) + "data: [DONE]\n\n")
    raw = payload.replace("\n", "\r\n").encode()

    class Pieces(httpx.AsyncByteStream):
        async def __aiter__(self):
            for i in range(0, len(raw), 3):
                yield raw[i : i + 3]

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Pieces())

    got = await collect(OpenAIChatWire(endpoint("openai", handler)), request("openai"))
    assert "".join(c.text for c in got if isinstance(c, TextChunk)) == "héllo ✓ wörld"
    assert got[-1] == FinishChunk("stop")


async def test_retries_that_give_up_say_what_was_tried() -> None:
    calls, sleeps, _, err = await _retry_run(
        [(503, {}, {}), (429, {"error": {"code": "rate_limit_exceeded"}}, {}), (503, {}, {})], attempts=3)
    assert len(calls) == 3 and len(sleeps) == 2
    assert err.kind == ErrorKind.OVERLOADED
    assert err.message.endswith("(after 3 attempts: overloaded, rate_limited, overloaded)")


async def test_a_retry_wait_past_the_deadline_is_not_started() -> None:
    calls, sleeps = [], []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(429, json={"error": {"code": "rate_limit_exceeded"}}, headers={"retry-after": "5"})

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    wire = OpenAIChatWire(endpoint("openai", handler))
    with pytest.raises(ParleyError) as ei:
        async for _ in stream_with_retries(wire, request("openai"), RetryPolicy(attempts=3), sleep=fake_sleep,
                                           remaining=lambda: 1.0):
            pass
    assert ei.value.kind == ErrorKind.RATE_LIMITED and len(calls) == 1 and sleeps == []


async def test_an_empty_data_field_is_not_an_event() -> None:
    from core.providers.sse import parse_sse

    async def lines():
        for line in ["data:", "", "event: ping", "data:", "", 'data: {"a": 1}', ""]:
            yield line

    assert [e.data async for e in parse_sse(lines())] == ['{"a": 1}']
