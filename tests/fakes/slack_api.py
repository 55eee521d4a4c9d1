"""A loopback fake of the Slack Web API (and Socket Mode) for tests and benchmarks.

It speaks what ``slack_sdk.AsyncWebClient`` sends (JSON or form bodies to
``/api/<method>`` with a bearer token) and answers the way Slack does: ``ok``
envelopes, ``ts`` ids, ``ratelimited`` with HTTP 429 and ``Retry-After``, and
``message_not_in_streaming_state`` once a stream expired. Every call is recorded;
every message keeps the history of what it showed, so tests can check the thread
and benchmarks can measure when text became visible.

Rate limits are enforced as sliding windows (``limits``: calls per window per
method per workspace, counted for the workspace whose token made the call;
``post_per_channel`` for ``chat.postMessage``) and, for ``chat.postMessage`` per
channel, optionally as a rate with a burst (``post_rate``). ``latency`` (seconds)
delays every Web API answer, standing for the network between a replica and Slack.
A 429's ``Retry-After`` is whole seconds, at least 1, as Slack sends it; with
``time_scale`` (benchmarks compress time) it counts the fake's compressed seconds,
so a client that sleeps ``Retry-After / time_scale`` waits what Slack would make it.

The fake's own limit table, from Slack's documentation and independent of Parley's
(:data:`PUBLISHED_PER_MINUTE` and the ``chat.postMessage`` figures below it), is what
:meth:`FakeSlackAPI.published` enforces.

``users.info`` answers from ``admins`` / ``owners`` (ids that are workspace admins or
owners); ``views.publish`` keeps each person's App Home in ``homes`` and
``views.open`` each modal in ``modals``, both refusing what Slack refuses (over 100
blocks, a section over 3,000 characters, a modal without a ``trigger_id``).

Messages keep their ``blocks``; every message, update, stream stop, response_url post
and App Home is checked against Block Kit's published limits by :func:`block_errors`
and refused with ``invalid_blocks`` as Slack does. ``assistant.threads.setStatus`` and
``setSuggestedPrompts`` are recorded in ``statuses`` and ``suggested``.

Installing in many workspaces (OAuth v2, https://docs.slack.dev/authentication/installing-with-oauth):
with ``client_id``/``client_secret`` set, ``GET /oauth/v2/authorize`` stands for the person who
approves the install in their workspace (the ``team`` query parameter, or ``installing``): it
mints a single-use code and redirects the browser to ``redirect_url`` (the app's configured
Redirect URL) with that code and the ``state`` it was given. ``oauth.v2.access`` (client
credentials by HTTP Basic auth) exchanges the code for a bot token of that workspace, or, with
``rotation`` (token rotation on: ``expires_in`` seconds), a refresh token for a new one. Each
workspace's bot token answers as that workspace (``auth.test``; ``Call.team`` records which
workspace's token made every call); :meth:`FakeSlackAPI.uninstall` revokes a workspace's
tokens as Slack does when the app is removed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import math
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import WSMsgType, web

# --- Slack's published rate limits: the fake's own table (Parley's is bots/slack/budgets.py) ----------
#: Calls per minute per method per workspace. Slack counts limits "per API method per workspace/team
#: per app" (https://docs.slack.dev/apis/web-api/rate-limits), in tiers whose published figure is a
#: floor: Tier 2 "20+ per minute", Tier 3 "50+", Tier 4 "100+". The floor of each method's tier, from
#: its reference page:
PUBLISHED_PER_MINUTE: dict[str, int] = {
    "chat.update": 50,  # Tier 3, https://docs.slack.dev/reference/methods/chat.update
    "chat.startStream": 20,  # Tier 2, https://docs.slack.dev/reference/methods/chat.startStream
    "chat.appendStream": 100,  # Tier 4, https://docs.slack.dev/reference/methods/chat.appendStream
    "chat.stopStream": 20,  # Tier 2, https://docs.slack.dev/reference/methods/chat.stopStream
    # "Special rate limits apply", no figure given
    # (https://docs.slack.dev/reference/methods/assistant.threads.setStatus): held to Tier 3 here.
    "assistant.threads.setStatus": 50,
    # chat.postMessage is "Special" (https://docs.slack.dev/reference/methods/chat.postMessage): "one
    # message per second per channel, while also maintaining a workspace-wide limit" (the rate-limits
    # page). Slack does not publish the workspace-wide figure: 300 per minute is ASSUMED.
    "chat.postMessage": 300,
}
#: chat.postMessage per channel: "1 per second", "short bursts >1 allowed. If you attempt bursts,
#: there is no guarantee that messages will" be accepted (the rate-limits page). The burst's size is not
#: published: 3 is ASSUMED.
POST_PER_CHANNEL_PER_SECOND = 1.0
POST_BURST = 3
#: A network round trip between a replica and Slack (assumed, not Slack's figure).
RTT = 0.05


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    t: float
    status: int = 200
    error: str | None = None
    team: str | None = None  # the workspace whose token made the call


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
    blocks: list[dict[str, Any]] = field(default_factory=list)

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
        post_rate: tuple[float, int] | None = None,
        latency: float = 0.0,
        time_scale: float = 1.0,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.scopes = scopes
        self.limits = limits or {}
        self.post_per_channel = post_per_channel
        #: chat.postMessage per channel as (calls per second, burst): a rate with a burst (GCRA).
        self.post_rate = post_rate
        #: Seconds of Slack per second of the fake: Retry-After is given in Slack's seconds.
        self.time_scale = time_scale
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
        self.latency = latency  # seconds every Web API call takes on the network (each way together)
        self._windows: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._tat: dict[str, float] = {}  # per channel: when its post_rate allows the next call (GCRA)
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
        # AI-app surfaces
        self.statuses: list[dict[str, Any]] = []  # assistant.threads.setStatus arguments, in order
        self.suggested: list[dict[str, Any]] = []  # assistant.threads.setSuggestedPrompts arguments
        self.invalid: list[tuple[str, list[str]]] = []  # (where, errors) of every refused Block Kit payload
        # Workspaces: the one of ``bot_token`` and those installed through OAuth
        self.teams: dict[str, dict[str, str]] = {
            "T0TEST": {"name": "Parley Test", "bot_user_id": "UBOT", "bot_id": "BBOT"}
        }
        self.tokens: dict[str, str] = {}  # bot tokens minted by installs -> workspace
        self.revoked: set[str] = set()
        # OAuth v2
        self.client_id: str | None = None
        self.client_secret: str | None = None
        self.redirect_url: str | None = None  # the app's configured Redirect URL
        self.installing = "T0TEST"  # the workspace the next approval is for (without ?team=)
        self.rotation: int | None = None  # token rotation on: seconds an access token lives
        self.authorizations: list[dict[str, str]] = []  # the query of every /oauth/v2/authorize
        self._codes: dict[str, dict[str, str]] = {}  # code -> {"team", "scope", "user"}
        self._refresh: dict[str, str] = {}  # refresh token -> workspace

    @classmethod
    def published(
        cls, *, bot_token: str, scale: float = 1.0, latency: float = RTT, post_burst: int = POST_BURST, **kw: Any
    ) -> FakeSlackAPI:
        """A fake that enforces :data:`PUBLISHED_PER_MINUTE` (sliding one-minute windows per method per
        workspace, chat.postMessage's assumed workspace-wide cap included), chat.postMessage's one per
        second per channel with a burst of ``post_burst``, and a network round trip of ``latency``
        Slack seconds, all with time compressed ×``scale`` (Retry-After counted in Slack's seconds)."""
        return cls(
            bot_token=bot_token,
            limits={m: (n, 60.0 / scale) for m, n in PUBLISHED_PER_MINUTE.items()},
            post_rate=(POST_PER_CHANNEL_PER_SECOND * scale, post_burst),
            latency=latency / scale,
            time_scale=scale,
            **kw,
        )

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
                web.get("/oauth/v2/authorize", self._authorize),
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

    def _limited(self, method: str, args: dict[str, Any], team: str = "team") -> float | None:
        """Seconds to wait if this call is over a limit, else None (and the call is counted).
        A method's limit is counted per workspace (``team``), as Slack counts it."""
        checks: list[tuple[tuple[str, str], int, float]] = []
        if method in self.limits:
            n, per = self.limits[method]
            checks.append(((method, f"team:{team}"), n, per))
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
        channel = str(args.get("channel"))
        if method == "chat.postMessage" and self.post_rate:
            rate, burst = self.post_rate
            tat = max(self._tat.get(channel, now), now)
            allowed_at = tat - (burst - 1) / rate
            if now < allowed_at:
                return allowed_at - now
            self._tat[channel] = tat + 1 / rate
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
        if self.latency:
            await asyncio.sleep(self.latency)
        if method in self.delays:
            await asyncio.sleep(self.delays[method])
        if method == "oauth.v2.access":
            return self._reply(call, *self._oauth_access(request, args))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip() or args.get("token")
        if method == "apps.connections.open":
            if token != self.app_token:
                return self._reply(call, {"ok": False, "error": "invalid_auth"})
            return self._reply(call, {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link"})
        call.team = "T0TEST" if token == self.bot_token else self.tokens.get(str(token)) if token else None
        if call.team is None or (self.auth_error and method == "auth.test"):
            error = "token_revoked" if token in self.revoked else "invalid_auth"
            return self._reply(call, {"ok": False, "error": self.auth_error or error})
        if self.ratelimit_next[method] > 0:
            self.ratelimit_next[method] -= 1
            return self._reply(
                call, {"ok": False, "error": "ratelimited"}, 429, {"Retry-After": str(self.retry_after)}
            )
        wait = self._limited(method, args, call.team)
        if wait is not None:
            return self._reply(
                call,
                {"ok": False, "error": "ratelimited"},
                429,
                {"Retry-After": str(max(1, math.ceil(wait * self.time_scale - 1e-9)))},
            )
        if method.startswith("chat.") and args.get("channel") in self.archived:
            return self._reply(call, {"ok": False, "error": "is_archived"})
        if method in self.fail_next:
            return self._reply(call, {"ok": False, "error": self.fail_next.pop(method)})
        if method == "auth.test":
            body, headers = self._auth_test(call.team)
            return self._reply(call, body, headers=headers)
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return self._reply(call, {"ok": False, "error": "unknown_method"})
        body, headers = handler(args)
        return self._reply(call, body, headers=headers)

    def _auth_test(self, team: str) -> tuple[dict[str, Any], dict[str, str]]:
        info = self.teams[team]
        return (
            {
                "ok": True,
                "url": f"https://{team.lower()}.slack.com/",
                "team": info["name"],
                "user": "parley",
                "team_id": team,
                "user_id": info["bot_user_id"],
                "bot_id": info["bot_id"],
                "is_enterprise_install": False,
            },
            {"x-oauth-scopes": info.get("scopes", self.scopes)},
        )

    # --- OAuth v2 ----------------------------------------------------------------------------------------
    async def _authorize(self, request: web.Request) -> web.Response:
        """The person installing approves: back to the app's Redirect URL with a code and the state."""
        q = dict(request.query)
        self.authorizations.append(q)
        self.changed.set()
        if self.client_id is None or q.get("client_id") != self.client_id:
            return web.Response(status=400, text="invalid_client_id")
        redirect = q.get("redirect_uri") or self.redirect_url
        if not redirect:
            return web.Response(status=400, text="no redirect URL configured")
        code = f"{int(time.time())}.{secrets_hex(12)}"
        self._codes[code] = {"team": q.get("team") or self.installing, "scope": q.get("scope", ""), "user": "U1"}
        sep = "&" if "?" in redirect else "?"
        raise web.HTTPFound(f"{redirect}{sep}{urlencode({'code': code, 'state': q.get('state', '')})}")

    def mint(self, team: str, scope: str | None = None) -> str:
        """A new bot token for ``team`` (its workspace is created if new)."""
        n = len(self.teams)
        info = self.teams.setdefault(team, {"name": f"Team {team}", "bot_user_id": f"UBOT{n}", "bot_id": f"BBOT{n}"})
        if scope is not None:
            info["scopes"] = scope
        token = f"xoxb-{n}-{secrets_hex(10)}"
        self.tokens[token] = team
        return token

    def uninstall(self, team: str) -> None:
        """The app is removed from ``team``: its tokens answer ``token_revoked`` from now on."""
        for token, t in list(self.tokens.items()):
            if t == team:
                del self.tokens[token]
                self.revoked.add(token)
        for refresh, t in list(self._refresh.items()):
            if t == team:
                del self._refresh[refresh]

    def _oauth_access(self, request: web.Request, args: dict[str, Any]) -> tuple[dict[str, Any], int]:
        client_id, _, client_secret = _basic(request.headers.get("Authorization", ""))
        client_id = client_id or args.get("client_id", "")
        client_secret = client_secret or args.get("client_secret", "")
        if self.client_id is None or client_id != self.client_id:
            return {"ok": False, "error": "invalid_client_id"}, 200
        if client_secret != self.client_secret:
            return {"ok": False, "error": "bad_client_secret"}, 200
        if args.get("grant_type") == "refresh_token":
            team = self._refresh.get(str(args.get("refresh_token")))
            if team is None:
                return {"ok": False, "error": "invalid_refresh_token"}, 200
            old = [t for t, w in self.tokens.items() if w == team]
            token = self.mint(team)
            for t in old:  # the new token replaces the old one at once (the fake is strict)
                del self.tokens[t]
                self.revoked.add(t)
            return {"ok": True, "token_type": "bot", "access_token": token,
                    "refresh_token": args["refresh_token"], "expires_in": 43_200,
                    "team": {"id": team}}, 200
        grant = self._codes.pop(str(args.get("code")), None)  # single use
        if grant is None:
            return {"ok": False, "error": "invalid_code"}, 200
        team = grant["team"]
        token = self.mint(team, grant["scope"])
        info = self.teams[team]
        body: dict[str, Any] = {
            "ok": True,
            "app_id": "A0TEST",
            "authed_user": {"id": grant["user"]},
            "scope": grant["scope"],
            "token_type": "bot",
            "access_token": token,
            "bot_user_id": info["bot_user_id"],
            "team": {"id": team, "name": info["name"]},
            "enterprise": None,
            "is_enterprise_install": False,
        }
        if self.rotation is not None:
            refresh = f"xoxe-1-{secrets_hex(12)}"
            self._refresh[refresh] = team
            body |= {"refresh_token": refresh, "expires_in": self.rotation}
        return body, 200

    def _blocks(self, method: str, args: dict[str, Any], surface: str = "message") -> list[dict[str, Any]] | str:
        """The call's blocks (JSON or a form-encoded string), or ``invalid_blocks``."""
        blocks = args.get("blocks") or []
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        errors = block_errors(blocks, surface)
        if errors:
            self.invalid.append((method, errors))
            return "invalid_blocks"
        return list(blocks)

    def _m_chat_postMessage(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        text = args.get("text") or args.get("markdown_text") or ""
        if len(text) > 40_000:
            return {"ok": False, "error": "msg_too_long"}, {}
        blocks = self._blocks("chat.postMessage", args)
        if isinstance(blocks, str):
            return {"ok": False, "error": blocks}, {}
        ts = self._new_ts()
        m = Message(
            str(args["channel"]), ts, args.get("thread_ts"), "", "message", username=args.get("username"),
            blocks=blocks,
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
        errors = block_errors(view.get("blocks") or [], "home") if isinstance(view, dict) else []
        if error is None and errors:
            self.invalid.append(("views.publish", errors))
            error = "invalid_blocks"
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
        blocks = self._blocks("chat.postEphemeral", args)
        if isinstance(blocks, str):
            return {"ok": False, "error": blocks}, {}
        self.ephemeral.append(args)
        return {"ok": True, "message_ts": self._new_ts()}, {}

    def _m_chat_update(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        m = self.messages.get(str(args.get("ts")))
        if m is None or m.channel != args.get("channel"):
            return {"ok": False, "error": "message_not_found"}, {}
        if m.streaming:
            return {"ok": False, "error": "message_is_streaming"}, {}
        blocks = self._blocks("chat.update", args)
        if isinstance(blocks, str):
            return {"ok": False, "error": blocks}, {}
        m.blocks = blocks
        m.show(args.get("text") or args.get("markdown_text") or "")
        return {"ok": True, "channel": m.channel, "ts": m.ts, "text": m.text}, {}

    def _m_chat_startStream(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        if not args.get("thread_ts"):
            return {"ok": False, "error": "invalid_arguments"}, {}
        if str(args.get("channel", "")).startswith("C") and not (
            args.get("recipient_user_id") and args.get("recipient_team_id")
        ):
            return {"ok": False, "error": "missing_recipient_user_id"}, {}
        text = _stream_text(args)
        if text is None:
            return {"ok": False, "error": "invalid_chunks"}, {}
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
        delta = _stream_text(args)
        if delta is None:
            return {"ok": False, "error": "invalid_chunks"}, {}
        if len(delta) > 12_000:
            return {"ok": False, "error": "msg_too_long"}, {}
        m.show(m.text + delta)
        return {"ok": True, "channel": m.channel, "ts": m.ts}, {}

    def _m_chat_stopStream(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        m = self._stream(args)
        if isinstance(m, dict):
            return m, {}
        blocks = self._blocks("chat.stopStream", args)
        if isinstance(blocks, str):
            return {"ok": False, "error": blocks}, {}
        tail = _stream_text(args)
        if tail is None:
            return {"ok": False, "error": "invalid_chunks"}, {}
        if tail:
            m.show(m.text + tail)
        m.blocks = blocks  # shown under the streamed text
        m.streaming = False
        return {"ok": True, "channel": m.channel, "ts": m.ts, "message": {"text": m.text}}, {}

    def _m_assistant_threads_setStatus(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        # https://docs.slack.dev/reference/methods/assistant.threads.setStatus: channel_id, thread_ts and
        # status are required; at most 10 loading_messages.
        loading = args.get("loading_messages") or []
        if isinstance(loading, str):
            loading = json.loads(loading)
        if not args.get("channel_id") or not args.get("thread_ts") or "status" not in args or len(loading) > 10:
            return {"ok": False, "error": "invalid_arguments"}, {}
        self.statuses.append({**args, "loading_messages": loading})
        return {"ok": True}, {}

    def _m_assistant_threads_setSuggestedPrompts(
        self, args: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        # https://docs.slack.dev/reference/methods/assistant.threads.setSuggestedPrompts: assistant:write,
        # up to four prompts, each with a title and a message.
        if "assistant:write" not in self.scopes.split(","):
            return {"ok": False, "error": "missing_scope", "needed": "assistant:write"}, {}
        prompts = args.get("prompts") or []
        if isinstance(prompts, str):
            prompts = json.loads(prompts)
        if (
            not args.get("channel_id")
            or not prompts
            or len(prompts) > 4
            or not all(p.get("title") and p.get("message") for p in prompts)
        ):
            return {"ok": False, "error": "invalid_arguments"}, {}
        self.suggested.append({**args, "prompts": prompts})
        return {"ok": True}, {}

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        errors = block_errors(body.get("blocks") or [], "message")
        if errors:
            self.invalid.append(("response_url", errors))
            self.changed.set()
            return web.Response(status=400, text="invalid_blocks")
        self.responses.append(body)
        self.changed.set()
        return web.Response(text="ok")

    # --- for benchmarks running the fake in another process ----------------------------------------
    def dump(self) -> dict[str, Any]:
        return {
            "calls": [[c.method, c.status, c.t] for c in self.calls],
            "messages": [
                {"channel": m.channel, "ts": m.ts, "thread_ts": m.thread_ts, "kind": m.kind, "history": m.history,
                 "streaming": m.streaming}
                for m in self.messages.values()
            ],
        }

    async def _dump(self, request: web.Request) -> web.Response:
        return web.json_response(self.dump())

    async def _reset(self, request: web.Request) -> web.Response:
        self.calls.clear()
        self.messages.clear()
        self._windows.clear()
        self._tat.clear()
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


def _stream_text(args: dict[str, Any]) -> str | None:
    """The text a stream call adds: ``markdown_text``, then the text of its ``markdown_text`` chunks
    (https://docs.slack.dev/reference/methods/chat.appendStream: "chunks", as slack_sdk's chat_stream
    sends them). None if the chunks are not a list of objects."""
    text = str(args.get("markdown_text") or "")
    chunks = args.get("chunks") or []
    if isinstance(chunks, str):
        try:
            chunks = json.loads(chunks)
        except ValueError:
            return None
    if not isinstance(chunks, list) or not all(isinstance(c, dict) for c in chunks):
        return None
    return text + "".join(str(c.get("text", "")) for c in chunks if c.get("type") == "markdown_text")


def secrets_hex(n: int) -> str:
    return secrets.token_hex(n)


def _basic(header: str) -> tuple[str, str, str]:
    """``(client_id, ":", client_secret)`` of an HTTP Basic ``Authorization`` header (empty if none)."""
    if not header.startswith("Basic "):
        return "", "", ""
    try:
        return base64.b64decode(header.removeprefix("Basic ").strip()).decode().partition(":")
    except ValueError:
        return "", "", ""


def sign(secret: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack sends with a request: ``X-Slack-Signature`` over ``v0:{ts}:{body}``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


# --- Block Kit's published limits ---------------------------------------------------------------------
#: https://docs.slack.dev/block-kit: 50 blocks in a message, 100 in a modal or Home tab.
MAX_BLOCKS = {"message": 50, "home": 100, "modal": 100}
#: https://docs.slack.dev/reference/block-kit/blocks/markdown-block: 12,000 characters across a payload's
#: markdown blocks.
MARKDOWN_CHARS = 12_000
#: Block types a message may hold (https://docs.slack.dev/reference/block-kit/blocks); input is for views.
KNOWN_BLOCKS = {
    "section", "markdown", "header", "context", "actions", "context_actions", "divider", "plan",
    "task_card", "rich_text", "image", "input",
}


def _text_of(obj: Any) -> str:
    return str(obj.get("text", "")) if isinstance(obj, dict) else str(obj or "")


def _element_errors(where: str, el: dict[str, Any]) -> list[str]:
    """Limits of the elements Parley uses (https://docs.slack.dev/reference/block-kit/block-elements)."""
    errs: list[str] = []
    kind = el.get("type")
    if len(str(el.get("action_id", ""))) > 255:
        errs.append(f"{where}: action_id over 255 characters")
    if kind == "button":
        if not _text_of(el.get("text")) or len(_text_of(el.get("text"))) > 75:
            errs.append(f"{where}: a button's text is 1 to 75 characters")
        if len(str(el.get("value", ""))) > 2000:
            errs.append(f"{where}: a button's value is at most 2,000 characters")
    elif kind == "static_select":
        options = el.get("options") or []
        if not 1 <= len(options) <= 100:
            errs.append(f"{where}: a static select has 1 to 100 options")
        for o in options:
            if len(_text_of(o.get("text"))) > 75 or len(str(o.get("value", ""))) > 150:
                errs.append(f"{where}: an option's text is at most 75 characters and its value 150")
        if len(_text_of(el.get("placeholder"))) > 150:
            errs.append(f"{where}: a placeholder is at most 150 characters")
    elif kind == "feedback_buttons":
        for side in ("positive_button", "negative_button"):
            b = el.get(side) or {}
            if not _text_of(b.get("text")) or len(_text_of(b.get("text"))) > 75 or not b.get("value"):
                errs.append(f"{where}: {side} needs a text of 1 to 75 characters and a value")
            if len(str(b.get("value", ""))) > 2000:
                errs.append(f"{where}: {side}'s value is at most 2,000 characters")
    elif kind == "icon_button":
        if not el.get("icon") or not _text_of(el.get("text")):
            errs.append(f"{where}: an icon button needs an icon and a text")
    elif kind not in ("plain_text", "mrkdwn", "image", "users_select", "multi_users_select", "plain_text_input",
                      "radio_buttons", "conversations_select", "number_input"):
        errs.append(f"{where}: unknown element {kind!r}")
    return errs


def block_errors(blocks: Any, surface: str = "message") -> list[str]:
    """What Slack would refuse in ``blocks`` (an empty list: nothing), from the Block Kit reference."""
    if not isinstance(blocks, list):
        return ["blocks must be a list"]
    errs: list[str] = []
    if len(blocks) > MAX_BLOCKS[surface]:
        errs.append(f"{len(blocks)} blocks: at most {MAX_BLOCKS[surface]} in a {surface}")
    markdown = 0
    for i, b in enumerate(blocks):
        kind = b.get("type")
        where = f"block {i} ({kind})"
        if kind not in KNOWN_BLOCKS:
            errs.append(f"{where}: unknown block type")
            continue
        if len(str(b.get("block_id", ""))) > 255:
            errs.append(f"{where}: block_id over 255 characters")
        if kind == "section":
            # https://docs.slack.dev/reference/block-kit/blocks/section-block: text 1 to 3,000 characters.
            text = _text_of(b.get("text"))
            if not text and not b.get("fields"):
                errs.append(f"{where}: a section needs a text or fields")
            if len(text) > 3000:
                errs.append(f"{where}: a section's text is at most 3,000 characters")
        elif kind == "markdown":
            markdown += len(str(b.get("text", "")))
            if not b.get("text"):
                errs.append(f"{where}: a markdown block needs a text")
        elif kind == "header":
            if len(_text_of(b.get("text"))) > 150:
                errs.append(f"{where}: a header is at most 150 characters")
        elif kind == "context":
            elements = b.get("elements") or []
            if not 1 <= len(elements) <= 10:
                errs.append(f"{where}: a context block has 1 to 10 elements")
            if any(len(_text_of(e)) > 3000 for e in elements):
                errs.append(f"{where}: a context text is at most 3,000 characters")
        elif kind == "actions":
            # https://docs.slack.dev/reference/block-kit/blocks/actions-block: at most 25 elements.
            elements = b.get("elements") or []
            if not 1 <= len(elements) <= 25:
                errs.append(f"{where}: an actions block has 1 to 25 elements")
            ids = [e.get("action_id") for e in elements if e.get("action_id")]
            if len(ids) != len(set(ids)):
                errs.append(f"{where}: action_ids must be unique in a block")
            for j, e in enumerate(elements):
                errs += _element_errors(f"{where} element {j}", e)
        elif kind == "context_actions":
            # https://docs.slack.dev/reference/block-kit/blocks/context-actions-block: at most 5 elements,
            # feedback buttons and icon buttons only.
            elements = b.get("elements") or []
            if not 1 <= len(elements) <= 5:
                errs.append(f"{where}: a context_actions block has 1 to 5 elements")
            for j, e in enumerate(elements):
                if e.get("type") not in ("feedback_buttons", "icon_button"):
                    errs.append(f"{where} element {j}: only feedback_buttons and icon_button")
                errs += _element_errors(f"{where} element {j}", e)
        elif kind == "plan":
            # https://docs.slack.dev/reference/block-kit/blocks/plan-block: a title and task cards.
            if not isinstance(b.get("title"), str) or not b["title"]:
                errs.append(f"{where}: a plan needs a plain-text title")
            tasks = b.get("tasks") or []
            ids = [t.get("task_id") for t in tasks]
            if len(ids) != len(set(ids)) or not all(ids):
                errs.append(f"{where}: every task needs a unique task_id")
            for t in tasks:
                # https://docs.slack.dev/reference/block-kit/blocks/task-card-block
                if not t.get("title") or t.get("status", "pending") not in ("pending", "in_progress", "complete",
                                                                            "error"):
                    errs.append(f"{where}: a task needs a title and a known status")
    if markdown > MARKDOWN_CHARS:
        errs.append(f"markdown blocks hold {markdown} characters: at most {MARKDOWN_CHARS}")
    return errs
