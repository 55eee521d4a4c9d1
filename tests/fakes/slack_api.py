"""A loopback fake of the Slack Web API (and Socket Mode) for tests and benchmarks.

It speaks what ``slack_sdk.AsyncWebClient`` sends (JSON or form bodies to
``/api/<method>`` with a bearer token) and answers the way Slack does: ``ok``
envelopes, ``ts`` ids, ``ratelimited`` with HTTP 429 and ``Retry-After``, and
``message_not_in_streaming_state`` once a stream expired. Every call is recorded;
every message keeps the history of what it showed, so tests can check the thread
and benchmarks can measure when text became visible.

Rate limits are enforced as sliding windows (``limits``: calls per window per
method per workspace; ``post_per_channel`` for ``chat.postMessage``).

``users.info`` answers from ``admins`` / ``owners`` (ids that are workspace admins or
owners); ``views.publish`` keeps each person's App Home in ``homes`` and
``views.open`` each modal in ``modals``, both refusing what Slack refuses (over 100
blocks, a section over 3,000 characters, a modal without a ``trigger_id``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    t: float
    status: int = 200
    error: str | None = None


@dataclass
class Message:
    channel: str
    ts: str
    thread_ts: str | None
    text: str
    kind: str  # message | stream
    user: str = "UBOT"
    username: str | None = None
    streaming: bool = False
    expired: bool = False
    history: list[tuple[float, str]] = field(default_factory=list)

    def show(self, text: str) -> None:
        self.text = text
        self.history.append((time.monotonic(), text))


class FakeSlackAPI:
    def __init__(
        self,
        *,
        bot_token: str,
        app_token: str | None = None,
        scopes: str = "commands,chat:write,chat:write.customize,app_mentions:read,im:history,users:read",
        limits: dict[str, tuple[int, float]] | None = None,
        post_per_channel: tuple[int, float] | None = None,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.scopes = scopes
        self.limits = limits or {}
        self.post_per_channel = post_per_channel
        self.calls: list[Call] = []
        self.messages: dict[str, Message] = {}
        self.ephemeral: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []  # what was posted to response_url
        self.ratelimit_next: dict[str, int] = defaultdict(int)
        self.retry_after = 1
        self.fail_next: dict[str, str] = {}
        self.archived: set[str] = set()  # channels whose chat.* calls answer is_archived
        self.auth_error: str | None = None
        self.delays: dict[str, float] = {}  # seconds a method takes to answer (to widen races)
        self._windows: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Socket Mode
        self.socket_outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.socket_acks: list[dict[str, Any]] = []
        self.socket_connected = asyncio.Event()
        self.changed = asyncio.Event()
        # People and surfaces
        self.admins: set[str] = set()
        self.owners: set[str] = set()
        self.homes: dict[str, dict[str, Any]] = {}  # user id -> the App Home view last published
        self.modals: list[dict[str, Any]] = []  # views.open arguments, in order

    # --- server ---------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def response_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/response"

    async def start(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.post("/api/{method}", self._api),
                web.get("/api/{method}", self._api),  # slack_sdk sends users.info as a GET
                web.post("/hooks/{hook}", self._hook),
                web.get("/link", self._socket),
                web.get("/_dump", self._dump),
                web.post("/_reset", self._reset),
            ]
        )
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeSlackAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- views for assertions ----------------------------------------------------------------------
    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        return sorted(
            (m for m in self.messages.values() if m.channel == channel and m.thread_ts == thread_ts),
            key=lambda m: float(m.ts),
        )

    def parents(self, channel: str | None = None) -> list[Message]:
        return [
            m
            for m in self.messages.values()
            if m.thread_ts is None and (channel is None or m.channel == channel)
        ]

    def called(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def expire_streams(self) -> int:
        n = 0
        for m in self.messages.values():
            if m.streaming:
                m.streaming, m.expired = False, True
                n += 1
        return n

    async def wait_for(self, predicate: Any, within: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (re-checked after every call)."""
        deadline = time.monotonic() + within
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    "condition not reached; calls: " + ", ".join(c.method for c in self.calls[-20:])
                )
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.2))
            except TimeoutError:
                pass

    # --- helpers --------------------------------------------------------------------------------------
    def _new_ts(self) -> str:
        n = next(self._ts)
        return f"{1_800_000_000 + n}.{n:06d}"

    def _limited(self, method: str, args: dict[str, Any]) -> float | None:
        """Seconds to wait if this call is over a limit, else None (and the call is counted)."""
        checks: list[tuple[tuple[str, str], int, float]] = []
        if method in self.limits:
            n, per = self.limits[method]
            checks.append(((method, "team"), n, per))
        if method == "chat.postMessage" and self.post_per_channel:
            n, per = self.post_per_channel
            checks.append(((method, str(args.get("channel"))), n, per))
        now = time.monotonic()
        for key, n, per in checks:
            w = self._windows[key]
            while w and w[0] <= now - per:
                w.popleft()
            if len(w) >= n:
                return w[0] + per - now
        for key, _, _ in checks:
            self._windows[key].append(now)
        return None

    def _reply(
        self, call: Call, body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        call.status = status
        if not body.get("ok", False):
            call.error = body.get("error")
        self.calls.append(call)
        self.changed.set()
        return web.json_response(body, status=status, headers=headers)

    # --- the Web API -----------------------------------------------------------------------------------
    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.can_read_body:
            args.update(dict(parse_qsl(await request.text())))
        call = Call(method, args, time.monotonic())
        if method in self.delays:
            await asyncio.sleep(self.delays[method])
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or args.get("token")
        if method == "apps.connections.open":
            if token != self.app_token:
                return self._reply(call, {"ok": False, "error": "invalid_auth"})
            return self._reply(call, {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link"})
        if token != self.bot_token or (self.auth_error and method == "auth.test"):
            return self._reply(call, {"ok": False, "error": self.auth_error or "invalid_auth"})
        if self.ratelimit_next[method] > 0:
            self.ratelimit_next[method] -= 1
            return self._reply(
                call, {"ok": False, "error": "ratelimited"}, 429, {"Retry-After": str(self.retry_after)}
            )
        wait = self._limited(method, args)
        if wait is not None:
            return self._reply(
                call,
                {"ok": False, "error": "ratelimited"},
                429,
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        if method.startswith("chat.") and args.get("channel") in self.archived:
            return self._reply(call, {"ok": False, "error": "is_archived"})
        if method in self.fail_next:
            return self._reply(call, {"ok": False, "error": self.fail_next.pop(method)})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return self._reply(call, {"ok": False, "error": "unknown_method"})
        body, headers = handler(args)
        return self._reply(call, body, headers=headers)

    def _m_auth_test(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        return (
            {
                "ok": True,
                "url": "https://parley-test.slack.com/",
                "team": "Parley Test",
                "user": "parley",
                "team_id": "T0TEST",
                "user_id": "UBOT",
                "bot_id": "BBOT",
                "is_enterprise_install": False,
            },
            {"x-oauth-scopes": self.scopes},
        )

    def _m_chat_postMessage(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        text = args.get("text") or args.get("markdown_text") or ""
        if len(text) > 40_000:
            return {"ok": False, "error": "msg_too_long"}, {}
        ts = self._new_ts()
        m = Message(
            str(args["channel"]), ts, args.get("thread_ts"), "", "message", username=args.get("username")
        )
        m.show(text)
        self.messages[ts] = m
        return {"ok": True, "channel": m.channel, "ts": ts, "message": {"text": text, "ts": ts}}, {}

    def _m_users_info(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        uid = str(args.get("user") or "")
        if not uid:
            return {"ok": False, "error": "user_not_found"}, {}
        if "users:read" not in self.scopes.split(","):
            return {"ok": False, "error": "missing_scope", "needed": "users:read"}, {}
        return {
            "ok": True,
            "user": {
                "id": uid,
                "team_id": "T0TEST",
                "name": uid.lower(),
                "is_bot": False,
                "is_admin": uid in self.admins or uid in self.owners,
                "is_owner": uid in self.owners,
                "is_primary_owner": False,
            },
        }, {}

    @staticmethod
    def _view_error(view: Any, kind: str) -> str | None:
        """What Slack answers for a view it refuses (limits from the Block Kit reference)."""
        if not isinstance(view, dict) or view.get("type") != kind:
            return "invalid_arguments"
        blocks = view.get("blocks") or []
        if len(blocks) > 100:
            return "invalid_arguments"
        for b in blocks:
            text = (b.get("text") or {}).get("text", "") if b.get("type") == "section" else ""
            if len(text) > 3000:
                return "invalid_arguments"
        if kind == "modal" and len(str((view.get("title") or {}).get("text", ""))) > 24:
            return "invalid_arguments"
        return None

    def _m_views_publish(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        view = args.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        error = self._view_error(view, "home")
        if error or not args.get("user_id"):
            return {"ok": False, "error": error or "invalid_arguments"}, {}
        self.homes[str(args["user_id"])] = view
        return {"ok": True, "view": {"id": "VHOME", **view}}, {}

    def _m_views_open(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        view = args.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        if not args.get("trigger_id"):
            return {"ok": False, "error": "invalid_trigger_id"}, {}
        error = self._view_error(view, "modal")
        if error:
            return {"ok": False, "error": error}, {}
        self.modals.append({**args, "view": view})
        return {"ok": True, "view": {"id": f"VMODAL{len(self.modals)}", **view}}, {}

    def _m_chat_postEphemeral(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        self.ephemeral.append(args)
        return {"ok": True, "message_ts": self._new_ts()}, {}

    def _m_chat_update(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        m = self.messages.get(str(args.get("ts")))
        if m is None or m.channel != args.get("channel"):
            return {"ok": False, "error": "message_not_found"}, {}
        if m.streaming:
            return {"ok": False, "error": "message_is_streaming"}, {}
        m.show(args.get("text") or args.get("markdown_text") or "")
        return {"ok": True, "channel": m.channel, "ts": m.ts, "text": m.text}, {}

    def _m_chat_startStream(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        if not args.get("thread_ts"):
            return {"ok": False, "error": "invalid_arguments"}, {}
        if str(args.get("channel", "")).startswith("C") and not (
            args.get("recipient_user_id") and args.get("recipient_team_id")
        ):
            return {"ok": False, "error": "missing_recipient_user_id"}, {}
        text = args.get("markdown_text") or ""
        if len(text) > 12_000:
            return {"ok": False, "error": "msg_too_long"}, {}
        ts = self._new_ts()
        m = Message(
            str(args["channel"]),
            ts,
            args["thread_ts"],
            "",
            "stream",
            username=args.get("username"),
            streaming=True,
        )
        m.show(text)
        self.messages[ts] = m
        return {"ok": True, "channel": m.channel, "ts": ts}, {}

    def delete(self, ts: str) -> None:
        """A moderator deletes a message: later calls on it answer message_not_found."""
        self.messages.pop(ts, None)

    def _stream(self, args: dict[str, Any]) -> Message | dict[str, Any]:
        m = self.messages.get(str(args.get("ts")))
        if m is None or m.kind != "stream":
            return {"ok": False, "error": "message_not_found"}
        if not m.streaming:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        return m

    def _m_chat_appendStream(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        m = self._stream(args)
        if isinstance(m, dict):
            return m, {}
        delta = args.get("markdown_text") or ""
        if len(delta) > 12_000:
            return {"ok": False, "error": "msg_too_long"}, {}
        m.show(m.text + delta)
        return {"ok": True, "channel": m.channel, "ts": m.ts}, {}

    def _m_chat_stopStream(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        m = self._stream(args)
        if isinstance(m, dict):
            return m, {}
        if args.get("markdown_text"):
            m.show(m.text + args["markdown_text"])
        m.streaming = False
        return {"ok": True, "channel": m.channel, "ts": m.ts, "message": {"text": m.text}}, {}

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.responses.append(body)
        self.changed.set()
        return web.Response(text="ok")

    # --- for benchmarks running the fake in another process ----------------------------------------
    def dump(self) -> dict[str, Any]:
        return {
            "calls": [[c.method, c.status, c.t] for c in self.calls],
            "messages": [
                {"channel": m.channel, "ts": m.ts, "thread_ts": m.thread_ts, "kind": m.kind, "history": m.history}
                for m in self.messages.values()
            ],
        }

    async def _dump(self, request: web.Request) -> web.Response:
        return web.json_response(self.dump())

    async def _reset(self, request: web.Request) -> web.Response:
        self.calls.clear()
        self.messages.clear()
        self._windows.clear()
        return web.json_response({"ok": True})

    # --- Socket Mode -----------------------------------------------------------------------------------
    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "debug_info": {"host": "fake"},
                "connection_info": {"app_id": "A0TEST"},
            }
        )
        self.socket_connected.set()

        async def pump() -> None:
            while True:
                env = await self.socket_outbox.get()
                await ws.send_json(env)

        sender = asyncio.create_task(pump())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.socket_acks.append(json.loads(msg.data))
                    self.changed.set()
        finally:
            sender.cancel()
        return ws


def sign(secret: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack sends with a request: ``X-Slack-Signature`` over ``v0:{ts}:{body}``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}
