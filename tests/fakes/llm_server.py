"""A loopback fake LLM server speaking the real wire protocols.

- ``POST /v1/chat/completions``: OpenAI Chat Completions SSE (``data: {json}``
  chunks, ``data: [DONE]``), usage as OpenAI (top-level, ``choices: []``) or
  Moonshot (inside ``choices[0]``) places it, comment lines, empty/null
  ``choices`` chunks, ``reasoning_content``.
- ``POST /v1/messages``: Anthropic Messages SSE (``message_start`` …
  ``message_stop``, ``ping``, ``event: error`` after 200). A request carrying
  ``tools`` and a forced ``tool_choice`` (``{"type": "tool", "name": ...}``) is
  answered with a ``tool_use`` block whose input streams as ``input_json_delta``
  events (the scenario's text as the ``partial_json`` pieces) and stop_reason
  ``tool_use``.
- ``GET /v1/models``: OpenAI/Anthropic-style model list (health checks).

Faults, per scenario: keep-alives forever and never a token (``keepalive_forever``),
accept and never answer (``no_response``), an error object inside the 200 stream
(``error_after_chunks`` + ``stream_error``), raw bytes injected into the stream
(``inject`` at ``inject_at``: malformed JSON, ``data: 42``, :func:`huge_text_event`),
a web page instead of a stream (``html``), an empty answer (``text=""``).

Behaviour per request comes from a :class:`Scenario`, chosen by the request's
``model`` (``server.scenarios[model]``) or ``server.default``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Scenario:
    text: str = "Hello from the fake model."
    chunk_chars: int = 4
    reasoning: str | None = None
    first_token_delay: float = 0.0
    chunk_delay: float = 0.0
    tokens_per_second: float | None = None
    usage: str = "top"  # top | choice | none
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    comments: list[str] = field(default_factory=list)
    empty_choice_chunks: bool = False
    http_error: tuple[int, Any, dict[str, str]] | None = None
    fail_first: int | None = None
    error_after_chunks: int | None = None
    stream_error: Any = None
    drop_after_chunks: int | None = None
    no_terminator: bool = False
    hang: bool = False
    #: After the headers (and Anthropic's message_start), a comment / ``event: ping``
    #: every ``keepalive_interval`` seconds, and never a token.
    keepalive_forever: bool = False
    keepalive_interval: float = 0.05
    #: After this many chunks, keep-alives forever and no more text.
    stall_after_chunks: int | None = None
    #: Accept the request and never send even the status line.
    no_response: bool = False
    #: Raw bytes written before chunk ``inject_at`` (then the stream goes on as usual).
    inject: bytes = b""
    inject_at: int = 0
    #: A 200 ``text/html`` page (a captive portal or a wrong base URL) instead of a stream.
    html: bool = False
    echo: bool = False
    finish_reason: str = "stop"
    served: int = 0  # requests seen (for fail_first)

    @property
    def stop_reason(self) -> str:
        """``finish_reason`` in Anthropic's words."""
        return {"stop": "end_turn", "length": "max_tokens"}.get(self.finish_reason, self.finish_reason)

    def delay(self) -> float:
        if self.tokens_per_second:
            return 1.0 / self.tokens_per_second
        return self.chunk_delay


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))


def _last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c)
    return ""


class FakeLLMServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.scenarios: dict[str, Scenario] = {}
        self.default = Scenario()
        self.requests: list[RecordedRequest] = []
        self.models_status = 200
        self.models_body: Any = None
        self._runner: web.AppRunner | None = None
        self._hanging: set[asyncio.Event] = set()

    # --- lifecycle ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ev in self._hanging:
            ev.set()
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeLLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def reset(self) -> None:
        self.scenarios.clear()
        self.default = Scenario()
        self.requests.clear()

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.model == model]

    # --- helpers ---------------------------------------------------------------------------
    async def _begin(self, request: web.Request) -> tuple[dict[str, Any], Scenario, web.StreamResponse | None]:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        self.requests.append(RecordedRequest(request.path, dict(request.headers), body, time.time()))
        sc = self.scenarios.get(str(body.get("model")), self.default)
        sc.served += 1
        if sc.no_response:
            await self._hang()  # until the server stops
            return body, sc, web.Response(status=503)
        if sc.html:
            return body, sc, web.Response(status=200, text=CAPTIVE_PORTAL, content_type="text/html")
        if sc.http_error and (sc.fail_first is None or sc.served <= sc.fail_first):
            status, payload, headers = sc.http_error
            text = payload if isinstance(payload, str) else json.dumps(payload)
            return body, sc, web.Response(status=status, text=text, headers=headers,
                                          content_type="application/json")
        return body, sc, None

    def _chunks(self, sc: Scenario, body: dict[str, Any]) -> list[str]:
        text = f"ECHO: {_last_user(body)}" if sc.echo else sc.text
        n = max(1, sc.chunk_chars)
        return [text[i : i + n] for i in range(0, len(text), n)]

    def _tokens(self, sc: Scenario, body: dict[str, Any], chunks: list[str]) -> tuple[int, int]:
        prompt = sc.prompt_tokens
        if prompt is None:
            prompt = max(1, len(json.dumps(body.get("messages", ""))) // 4)
        completion = sc.completion_tokens if sc.completion_tokens is not None else max(1, len("".join(chunks)) // 4)
        return prompt, completion

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"content-type": "text/event-stream",
                                                       "cache-control": "no-cache"})
        await resp.prepare(request)
        return resp

    async def _hang(self) -> None:
        ev = asyncio.Event()
        self._hanging.add(ev)
        try:
            await ev.wait()
        finally:
            self._hanging.discard(ev)

    @staticmethod
    def _drop(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()

    async def _keepalive(self, resp: web.StreamResponse, sc: Scenario, frame: bytes) -> None:
        """Keep the connection busy without ever sending a token (until the client leaves)."""
        stop = asyncio.Event()
        self._hanging.add(stop)
        try:
            while not stop.is_set():
                await resp.write(frame)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), sc.keepalive_interval)
        finally:
            self._hanging.discard(stop)

    # --- OpenAI ----------------------------------------------------------------------------------
    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body, sc, error = await self._begin(request)
        if error is not None:
            return error
        resp = await self._stream(request)
        if sc.hang:
            await self._hang()
            return resp
        model = body.get("model", "fake")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = self._chunks(sc, body)
        prompt, completion = self._tokens(sc, body, chunks)

        def frame(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            if usage is not None:
                choice["usage"] = usage
            obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                   "model": model, "choices": [choice]}
            return f"data: {json.dumps(obj)}\n\n".encode()

        usage_obj = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion,
                     "prompt_tokens_details": {"cached_tokens": sc.cached_tokens}}
        try:
            if sc.keepalive_forever:
                await self._keepalive(resp, sc, b": keep-alive\n\n")
                return resp
            for c in sc.comments:
                await resp.write(f"{c}\n\n".encode())
            if sc.first_token_delay:
                await asyncio.sleep(sc.first_token_delay)
            await resp.write(frame({"role": "assistant", "content": ""}))
            if sc.reasoning:
                await resp.write(frame({"reasoning_content": sc.reasoning}))
            delay = sc.delay()
            for i, c in enumerate(chunks):
                if sc.drop_after_chunks is not None and i >= sc.drop_after_chunks:
                    self._drop(request)
                    return resp
                if sc.error_after_chunks is not None and i >= sc.error_after_chunks:
                    err = sc.stream_error or {"error": {"message": "Internal error", "type": "server_error"}}
                    await resp.write(f"data: {json.dumps(err)}\n\n".encode())
                    return resp
                if i and delay:
                    await asyncio.sleep(delay)
                if sc.stall_after_chunks is not None and i >= sc.stall_after_chunks:
                    await self._keepalive(resp, sc, b": keep-alive\n\n")
                    return resp
                if sc.inject and i == sc.inject_at:
                    await resp.write(sc.inject)
                await resp.write(frame({"content": c}))
                if sc.empty_choice_chunks:
                    await resp.write(b'data: {"id":"x","choices":[]}\n\n')
                    await resp.write(b'data: {"id":"x","choices":null}\n\n')
                for comment in sc.comments:
                    await resp.write(f"{comment}\n\n".encode())
            if sc.usage == "choice":
                await resp.write(frame({}, sc.finish_reason, usage_obj))
            else:
                await resp.write(frame({}, sc.finish_reason))
                if sc.usage == "top" and include_usage:
                    obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
                           "choices": [], "usage": usage_obj}
                    await resp.write(f"data: {json.dumps(obj)}\n\n".encode())
            if not sc.no_terminator:
                await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError, RuntimeError):
            pass  # the client went away
        return resp

    # --- Anthropic ---------------------------------------------------------------------------------
    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body, sc, error = await self._begin(request)
        if error is not None:
            return error
        resp = await self._stream(request)
        if sc.hang:
            await self._hang()
            return resp
        chunks = self._chunks(sc, body)
        prompt, completion = self._tokens(sc, body, chunks)
        choice = body.get("tool_choice")
        forced = (choice.get("name") if isinstance(choice, dict) and choice.get("type") == "tool"
                  and body.get("tools") else None)

        def ev(name: str, obj: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()

        try:
            if sc.first_token_delay:
                await asyncio.sleep(sc.first_token_delay)
            await resp.write(ev("message_start", {"type": "message_start", "message": {
                "id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model"),
                "content": [], "stop_reason": None,
                "usage": {"input_tokens": prompt - sc.cached_tokens, "cache_read_input_tokens": sc.cached_tokens,
                          "output_tokens": 1}}}))
            idx = 0
            if sc.reasoning:
                await resp.write(ev("content_block_start", {"type": "content_block_start", "index": 0,
                                                            "content_block": {"type": "thinking", "thinking": ""}}))
                await resp.write(ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                            "delta": {"type": "thinking_delta", "thinking": sc.reasoning}}))
                await resp.write(ev("content_block_stop", {"type": "content_block_stop", "index": 0}))
                idx = 1
            block: dict[str, Any] = (
                {"type": "tool_use", "id": "toolu_fake", "name": forced, "input": {}} if forced
                else {"type": "text", "text": ""})
            await resp.write(ev("content_block_start", {"type": "content_block_start", "index": idx,
                                                        "content_block": block}))
            if sc.keepalive_forever:
                await self._keepalive(resp, sc, ev("ping", {"type": "ping"}))
                return resp
            await resp.write(ev("ping", {"type": "ping"}))
            delay = sc.delay()
            for i, c in enumerate(chunks):
                if sc.drop_after_chunks is not None and i >= sc.drop_after_chunks:
                    self._drop(request)
                    return resp
                if sc.error_after_chunks is not None and i >= sc.error_after_chunks:
                    err = sc.stream_error or {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                    await resp.write(ev("error", err))
                    return resp
                if i and delay:
                    await asyncio.sleep(delay)
                if sc.stall_after_chunks is not None and i >= sc.stall_after_chunks:
                    await self._keepalive(resp, sc, ev("ping", {"type": "ping"}))
                    return resp
                if sc.inject and i == sc.inject_at:
                    await resp.write(sc.inject)
                piece = ({"type": "input_json_delta", "partial_json": c} if forced
                         else {"type": "text_delta", "text": c})
                await resp.write(ev("content_block_delta", {"type": "content_block_delta", "index": idx,
                                                            "delta": piece}))
            await resp.write(ev("content_block_stop", {"type": "content_block_stop", "index": idx}))
            stop_reason = "tool_use" if forced and sc.finish_reason == "stop" else sc.stop_reason
            await resp.write(ev("message_delta", {"type": "message_delta",
                                                  "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                                  "usage": {"output_tokens": completion}}))
            if not sc.no_terminator:
                await resp.write(ev("message_stop", {"type": "message_stop"}))
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError, RuntimeError):
            pass
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append(RecordedRequest(request.path, dict(request.headers), {}, time.time()))
        body = self.models_body or {"object": "list", "data": [
            {"id": m, "object": "model", "type": "model"} for m in (list(self.scenarios) or ["fake-model"])]}
        return web.Response(status=self.models_status, text=json.dumps(body), content_type="application/json")


CAPTIVE_PORTAL = (
    "<!doctype html><html><head><title>Sign in to the network</title></head>"
    "<body><form action='/login'>Accept the terms to continue</form></body></html>"
)


def huge_text_event(wire: str, chars: int) -> bytes:
    """One SSE event carrying ``chars`` characters of answer on one line, in ``wire``'s shape."""
    text = "x" * chars
    if wire == "anthropic_messages":
        obj: dict[str, Any] = {"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": text}}
        return f"event: content_block_delta\ndata: {json.dumps(obj)}\n\n".encode()
    obj = {"id": "chatcmpl-fake", "choices": [{"index": 0, "delta": {"content": text}}]}
    return f"data: {json.dumps(obj)}\n\n".encode()


@contextlib.contextmanager
def running_in_thread() -> Iterator[FakeLLMServer]:
    """A started server on its own event loop in a daemon thread (for subprocess tests)."""
    server = FakeLLMServer()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)


def main() -> None:
    p = argparse.ArgumentParser(description="Serve the fake LLM API on loopback.")
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args()

    async def go() -> None:
        async with FakeLLMServer(port=args.port) as s:
            print(f"fake LLM at {s.base_url}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(go())


if __name__ == "__main__":
    main()
