"""A loopback fake of Discord's REST API (v10), for the real discord.py client.

Point ``discord.http.Route.BASE`` at :attr:`FakeDiscordAPI.base_url`. Every call
is recorded in :attr:`FakeDiscordAPI.calls`; messages, threads and application
commands are kept so tests can read the final state of a channel.

Endpoints: ``GET /users/@me``, ``GET /oauth2/applications/@me``, application
command bulk overwrite/list (global and guild), channel messages create / edit /
get, typing (``POST /channels/{id}/typing``), thread from a message, a DM channel with a
user (``POST /users/@me/channels``; :meth:`FakeDiscordAPI.dm_messages` reads what was sent
there), interaction callback, original response edit, follow-ups and their edits.
Messages keep their ``components``
and ``poll`` (answers numbered from 1, as Discord numbers them); interaction messages
(original responses and follow-ups) are kept per token in :attr:`FakeDiscordAPI.webhook`;
an update (callback type 7) edits the token's original when a test set which message that is.

Knobs:

- :meth:`rate_limit` answers the next matching requests with a 429 the way
  Discord does (``retry_after`` JSON, ``Retry-After``, ``X-RateLimit-*`` and a
  ``Via`` header; without ``Via`` discord.py takes a 429 for a Cloudflare ban);
- :meth:`forbid` answers 403 Missing Permissions (code 50013);
- ``channel_limit=(n, window)`` enforces a per-channel message bucket with fixed
  windows and real ``X-RateLimit-*`` headers, for benchmarks: creates and edits
  share it, or, with ``edits_apart=True``, each has its own count of ``n`` per
  ``window`` while both report one ``X-RateLimit-Bucket`` (what bots observe on
  Discord: :data:`CHANNEL_MESSAGES`);
- ``latency``: the network's round trip, in seconds (default 0): half of it passes before a
  request is handled (so a stored message is stored then) and half before the answer leaves;
- ``on_store(channel_id, message_id, content, t)`` sees every stored content;
- ``followup_limit``: the most follow-ups one interaction token may create (Discord allows
  a user-installed app 5; more is refused with 400);
- ``global_limit``: Discord's global limit, at most that many requests per second per bot
  token across all of the bot's connections and processes (interaction endpoints excluded),
  enforced over any sliding ``global_window`` (1 s; a benchmark that compresses time shrinks
  it); past it, a 429 with ``global: true`` and ``X-RateLimit-Global``. Whether it is
  enforced or not, every request it would count is recorded
  (:attr:`FakeDiscordAPI.global_calls`): :meth:`FakeDiscordAPI.peak` is the most in any
  window, :meth:`FakeDiscordAPI.per_second` the count in each second.

The gateway. ``GET /gateway`` and ``GET /gateway/bot`` (with ``shards``, Discord's recommended
count: :attr:`FakeDiscordAPI.shards`, and ``session_start_limit``) point at a websocket
(:attr:`FakeDiscordAPI.gateway_url`) that speaks the gateway's JSON protocol: HELLO, IDENTIFY
(the token checked, close code 4004; ``shard: [id, count]`` checked, 4010), heartbeats and their
ACKs, READY with the shard's guilds, then a GUILD_CREATE for each (guilds registered with
:meth:`FakeDiscordAPI.add_guild`). :meth:`FakeDiscordAPI.dispatch` routes an event as Discord does:
a guild's to every session of shard ``(guild_id >> 22) % count``, one without a guild to shard 0;
:attr:`FakeDiscordAPI.delivered` records which session got what.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1_420_070_400_000
JSON = web.RequestKey("json", object)
RATELIMIT = web.RequestKey("ratelimit", dict)
_seq = itertools.count(1)

#: Discord's global limit, per bot token, whatever the route and however many connections or
#: processes make the requests: "All bots can make up to 50 requests per second to our API."
#: and "Interaction endpoints are not bound to the bot's Global Rate Limit."
#: (https://discord.com/developers/docs/topics/rate-limits#global-rate-limit). A 429 past it
#: carries ``"global": true``, ``X-RateLimit-Global: true`` and ``X-RateLimit-Scope: global``.
GLOBAL_LIMIT = 50
#: Discord's per-channel message bucket, as bots observe it: Discord does not publish it ("rate
#: limits should not be hard coded", https://discord.com/developers/docs/topics/rate-limits) and
#: tells it only in the ``X-RateLimit-*`` headers. What those headers are seen to say: 5 per 5 s per
#: channel for ``POST /channels/{id}/messages`` and ``PATCH /channels/{id}/messages/{id}``, with one
#: ``X-RateLimit-Bucket`` hash for both (discord/discord-api-docs#2761, "hashes of 5/5"; #981), yet
#: counted apart: after the creates are spent an edit still goes through, and each answers
#: ``remaining = limit - 1`` right after the other (discord/discord-api-docs#1442 in 2020, #8073 in
#: 2026). ``edits_apart=True`` is that reading; the default (one count for both) is the stricter one.
CHANNEL_MESSAGES = (5, 5.0)
#: Interaction endpoints (a callback, and the webhook of an interaction token): outside the global limit.
_INTERACTION_ENDPOINT = re.compile(r"^/(interactions/\d+/[^/]+/callback|webhooks/\d+/[^/]+)(/|$)")
#: Every permission (for a member or the app in an interaction).
ALL_PERMISSIONS = str((1 << 53) - 1)
#: What HELLO asks of the client (milliseconds between heartbeats).
HEARTBEAT_MS = 41_250
#: Gateway close codes (https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway).
AUTHENTICATION_FAILED, INVALID_SHARD = 4004, 4010


def snowflake() -> int:
    ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
    return (ms << 22) | (next(_seq) & 0x3FFFFF)


def iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(t or time.time(), UTC).isoformat()


def shard_of(guild_id: int, count: int) -> int:
    """The shard a guild's events go to: ``(guild_id >> 22) % num_shards``
    (https://discord.com/developers/docs/topics/gateway#sharding)."""
    return (guild_id >> 22) % count


def user_json(uid: int, name: str = "ada", *, bot: bool = False) -> dict[str, Any]:
    return {"id": str(uid), "username": name, "discriminator": "0", "global_name": name.title(), "avatar": None,
            "bot": bot, "flags": 0}


@dataclass
class Call:
    method: str
    path: str
    body: Any
    status: int
    at: float
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class StoredMessage:
    id: int
    channel_id: int
    author: dict[str, Any]
    content: str
    flags: int = 0
    thread_id: int | None = None
    history: list[tuple[float, str]] = field(default_factory=list)
    edits: int = 0
    components: list[dict[str, Any]] = field(default_factory=list)
    poll: dict[str, Any] | None = None


@dataclass
class Rule:
    """Answer matching requests with ``status`` (429 or 403) ``times`` times."""

    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    retry_after: float = 0.0
    global_: bool = False


@dataclass
class _Window:
    started: float = 0.0
    used: int = 0


@dataclass
class GatewaySession:
    """One gateway connection: the shard it identified as, and the events it was sent."""

    ws: web.WebSocketResponse
    session_id: str
    shard: tuple[int, int] = (0, 1)  # (shard id, shard count), as in IDENTIFY
    intents: int | None = None
    seq: int = 0
    closed: bool = False
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def receives(self, guild_id: int | None) -> bool:
        """Whether Discord sends this session a guild's events (one without a guild: shard 0)."""
        shard_id, count = self.shard
        return (shard_of(guild_id, count) if guild_id else 0) == shard_id

    def received(self, event: str) -> list[dict[str, Any]]:
        return [d for e, d in self.events if e == event]


class FakeDiscordAPI:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        channel_limit: tuple[int, float] | None = None,
        app_id: int | None = None,
        global_limit: int | None = None,
        global_window: float = 1.0,
        shards: int = 1,
        latency: float = 0.0,
        edits_apart: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.tokens: set[str] = {token} if token else set()
        self.bot_id = app_id or snowflake()
        self.app_id = self.bot_id  # modern bots: the application id is the bot user's id
        self.owner_id = snowflake()
        self.calls: list[Call] = []
        self.messages: dict[int, StoredMessage] = {}
        self.threads: dict[int, dict[str, Any]] = {}
        self.channel_guild: dict[int, int] = {}
        self.dms: dict[int, int] = {}  # user id -> their DM channel with the bot
        self.commands: dict[str, list[dict[str, Any]]] = {}  # "global" or guild id -> commands
        self.interaction_responses: list[dict[str, Any]] = []
        self.original_edits: list[dict[str, Any]] = []
        self.followups: list[dict[str, Any]] = []
        self.rules: list[Rule] = []
        self.channel_limit = channel_limit
        #: Creates and edits counted apart in a channel (each ``channel_limit``), one bucket hash.
        self.edits_apart = edits_apart
        self.windows: dict[int | tuple[int, str], _Window] = {}
        self.limited = 0  # 429s answered
        self.on_store: Callable[[int, int, str, float], None] | None = None
        self.latency = latency  # the round trip: half before a request is handled, half after
        #: interaction token -> its messages: the original response first (None until it has one), then follow-ups
        self.webhook: dict[str, list[StoredMessage | None]] = {}
        self.followup_limit: int | None = None
        #: Requests per second (any sliding second) per bot token; None: counted, not enforced.
        self.global_limit = global_limit
        self.global_window = global_window
        #: Every request the global limit counts: (when, accepted), in arrival order.
        self.global_calls: list[tuple[float, bool]] = []
        self.global_limited = 0  # global 429s answered
        self._global_granted: dict[str, collections.deque[float]] = {}
        #: The gateway: Discord's recommended shard count (GET /gateway/bot), the guilds the bot is
        #: in (guild id -> its GUILD_CREATE payload), and every session that identified.
        self.shards = shards
        self.guilds: dict[int, dict[str, Any]] = {}
        self.sessions: list[GatewaySession] = []
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/api/v10/users/@me", self._me)
        r.add_get("/api/v10/oauth2/applications/@me", self._application)
        r.add_put("/api/v10/applications/{app}/commands", self._put_commands)
        r.add_get("/api/v10/applications/{app}/commands", self._get_commands)
        r.add_put("/api/v10/applications/{app}/guilds/{guild}/commands", self._put_commands)
        r.add_get("/api/v10/applications/{app}/guilds/{guild}/commands", self._get_commands)
        r.add_post("/api/v10/users/@me/channels", self._create_dm)
        r.add_get("/api/v10/channels/{channel}", self._get_channel)
        r.add_post("/api/v10/channels/{channel}/messages", self._create_message)
        r.add_get("/api/v10/channels/{channel}/messages/{message}", self._get_message)
        r.add_patch("/api/v10/channels/{channel}/messages/{message}", self._edit_message)
        r.add_post("/api/v10/channels/{channel}/messages/{message}/threads", self._create_thread)
        r.add_post("/api/v10/channels/{channel}/typing", self._typing)
        r.add_post("/api/v10/interactions/{id}/{token}/callback", self._callback)
        r.add_patch("/api/v10/webhooks/{app}/{token}/messages/@original", self._edit_original)
        r.add_patch("/api/v10/webhooks/{app}/{token}/messages/{message}", self._edit_followup)
        r.add_post("/api/v10/webhooks/{app}/{token}", self._followup)
        r.add_get("/api/v10/gateway", self._gateway)
        r.add_get("/api/v10/gateway/bot", self._gateway_bot)
        r.add_get("/gateway", self._socket)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"Discord is going away.")
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeDiscordAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- knobs ----------------------------------------------------------------------------------
    def rate_limit(self, method: str, path_regex: str, *, times: int = 1, retry_after: float = 0.2,
                   global_: bool = False) -> None:
        self.rules.append(Rule(method, re.compile(path_regex), 429, times, retry_after, global_))

    def forbid(self, method: str, path_regex: str, *, times: int = 1_000_000) -> None:
        self.rules.append(Rule(method, re.compile(path_regex), 403, times))

    # --- queries for tests ----------------------------------------------------------------------
    def channel_messages(self, channel_id: int) -> list[StoredMessage]:
        return sorted((m for m in self.messages.values() if m.channel_id == channel_id), key=lambda m: m.id)

    def dm_messages(self, user_id: int) -> list[StoredMessage]:
        """What the bot sent the user in a DM."""
        channel = self.dms.get(user_id)
        return [] if channel is None else self.channel_messages(channel)

    def calls_to(self, method: str, fragment: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and fragment in c.path]

    def add_channel(self, channel_id: int, guild_id: int) -> None:
        self.channel_guild[channel_id] = guild_id
        listed = self.guilds.get(guild_id, {}).get("channels")
        if listed is not None and str(channel_id) not in {c["id"] for c in listed}:
            listed.append(self.channel_json(channel_id))

    async def wait_for(self, predicate: Callable[[], Any], within: float = 10.0, what: str = "condition", *,
                       every: float = 0.05) -> None:
        """Wait until ``predicate()`` holds (checked ``every`` seconds)."""
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached within {within}s")
            await asyncio.sleep(every)

    # --- the global limit, as a test reads it ---------------------------------------------------
    def peak(self, window: float = 1.0, *, accepted: bool | None = None) -> int:
        """The most requests the global limit counted in any ``window`` seconds (sliding):
        all of them, or only those ``accepted`` (or refused)."""
        times = [t for t, ok in self.global_calls if accepted is None or ok is accepted]
        best = start = 0
        for i, t in enumerate(times):
            while times[start] <= t - window:
                start += 1
            best = max(best, i - start + 1)
        return best

    def per_second(self) -> list[int]:
        """How many requests the global limit counted in each second since the first."""
        if not self.global_calls:
            return []
        first = self.global_calls[0][0]
        counts = collections.Counter(int(t - first) for t, _ in self.global_calls)
        return [counts.get(i, 0) for i in range(max(counts) + 1)]

    # --- guilds and the gateway -----------------------------------------------------------------
    def add_guild(self, guild_id: int | None = None, *, channels: int = 1, owner_id: int | None = None) -> int:
        """The bot is in this guild (sent in GUILD_CREATE to the shard it belongs to), with
        ``channels`` text channels of its own. Returns the guild id."""
        gid = guild_id or snowflake()
        self.guilds[gid] = guild_json(gid, owner_id or self.owner_id)
        for _ in range(channels):
            self.add_channel(snowflake(), gid)
        return gid

    def guild_channels(self, guild_id: int) -> list[int]:
        return [int(c["id"]) for c in self.guilds[guild_id]["channels"]]

    def live_sessions(self) -> list[GatewaySession]:
        return [s for s in self.sessions if not s.closed]

    async def dispatch(self, event: str, data: dict[str, Any]) -> list[GatewaySession]:
        """Send a gateway event where Discord would: to every live session of the shard of its
        ``guild_id``, or of shard 0 when it has none (a DM). Returns the sessions it went to."""
        guild = int(data["guild_id"]) if data.get("guild_id") else None
        targets = [s for s in self.live_sessions() if s.receives(guild)]
        for s in targets:
            await self._send_event(s, event, data)
        return targets

    def interaction_payload(self, guild_id: int, channel_id: int, user_id: int, name: str,
                            options: dict[str, Any] | None = None) -> dict[str, Any]:
        """An INTERACTION_CREATE for ``/name`` by a member with every permission, in a guild channel."""
        opts = [{"name": k, "type": 10 if isinstance(v, float) else 4 if isinstance(v, int) else 3, "value": v}
                for k, v in (options or {}).items()]
        return {
            "id": str(snowflake()), "application_id": str(self.app_id), "type": 2,
            "data": {"id": str(snowflake()), "name": name, "type": 1, "options": opts},
            "guild_id": str(guild_id), "channel_id": str(channel_id), "channel": self.channel_json(channel_id),
            "member": {"user": user_json(user_id, f"user{user_id % 10_000}"), "roles": [], "joined_at": iso(),
                       "deaf": False, "mute": False, "flags": 0, "pending": False, "permissions": ALL_PERMISSIONS},
            "token": "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(24), "version": 1, "app_permissions": ALL_PERMISSIONS,
            "locale": "en-US", "guild_locale": "en-US", "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild_id)}, "context": 0, "attachment_size_limit": 8388608,
        }

    # --- plumbing -------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            ctype = request.headers.get("Content-Type", "")
            if ctype.startswith("application/json"):
                body = json.loads(raw or b"null")
            elif ctype.startswith("multipart/"):
                body = _payload_json(raw)
        request[JSON] = body
        if not request.path.startswith("/api/"):
            return await handler(request)  # the gateway's websocket
        path = request.path.removeprefix("/api/v10")
        if self.latency:
            await asyncio.sleep(self.latency / 2)  # the request on its way
        resp = (self._auth(request) or self._global(request, path) or self._rule(request.method, path)
                or self._bucket(request, path))
        if resp is None:
            resp = await handler(request)
        self.calls.append(Call(request.method, path, body, resp.status, time.monotonic(), dict(request.query)))
        if self.latency:
            await asyncio.sleep(self.latency / 2)  # the answer on its way back
        return resp

    def _auth(self, request: web.Request) -> web.Response | None:
        if request.path.startswith(("/api/v10/interactions/", "/api/v10/webhooks/")):
            return None  # authenticated by the interaction token in the path
        if request.path == "/api/v10/gateway":
            return None  # public
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bot ") or (self.tokens and auth[4:] not in self.tokens):
            return _jr({"message": "401: Unauthorized", "code": 0}, status=401)
        return None

    def _global(self, request: web.Request, path: str) -> web.Response | None:
        """Discord's global limit: per bot token, any route but the interaction endpoints."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bot ") or _INTERACTION_ENDPOINT.match(path):
            return None
        now = time.monotonic()
        granted = self._global_granted.setdefault(auth, collections.deque())
        while granted and granted[0] <= now - self.global_window:
            granted.popleft()
        accepted = self.global_limit is None or len(granted) < self.global_limit
        self.global_calls.append((now, accepted))
        if not accepted:
            self.global_limited += 1
            return self._too_many(granted[0] + self.global_window - now, global_=True)
        granted.append(now)
        return None

    def _rule(self, method: str, path: str) -> web.Response | None:
        for rule in self.rules:
            if rule.times > 0 and rule.method == method and rule.pattern.search(path):
                rule.times -= 1
                if rule.status == 429:
                    return self._too_many(rule.retry_after, global_=rule.global_)
                return _jr({"message": "Missing Permissions", "code": 50013}, status=403)
        return None

    def _too_many(self, retry_after: float, *, global_: bool = False, bucket: str = "fakebucket",
                  limit: int = 5) -> web.Response:
        self.limited += 1
        # Retry-After is whole seconds, as Discord sends it; the body's retry_after (and the bucket's
        # X-RateLimit-Reset-After) carry the exact time, which is what discord.py and Parley read.
        headers = {"Via": "1.1 google", "Retry-After": str(max(1, int(retry_after + 0.999)))}
        if global_:  # as Discord's example of an exceeded global limit: no route's headers
            headers |= {"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global"}
        else:
            headers |= {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
                "X-RateLimit-Bucket": bucket,
                "X-RateLimit-Scope": "user",
            }
        body = {"message": "You are being rate limited.", "retry_after": round(retry_after, 3), "global": global_}
        return _jr(body, status=429, headers=headers)

    def _bucket(self, request: web.Request, path: str) -> web.Response | None:
        """Per-channel message bucket (create + edit, or each apart: ``edits_apart``), fixed windows,
        like Discord's headers say."""
        if self.channel_limit is None:
            return None
        m = re.match(r"^/channels/(\d+)/messages(/\d+)?$", path)
        if not m or request.method not in ("POST", "PATCH"):
            return None
        limit, window = self.channel_limit
        channel = int(m.group(1))
        now = time.monotonic()
        w = self.windows.setdefault((channel, request.method) if self.edits_apart else channel, _Window())
        if now - w.started >= window:
            w.started, w.used = now, 0
        reset_after = max(0.0, window - (now - w.started))
        if w.used >= limit:
            return self._too_many(reset_after, bucket=f"msg-{channel}", limit=limit)
        w.used += 1
        request[RATELIMIT] = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(limit - w.used),
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Bucket": f"msg-{channel}",
        }
        return None

    def _json(self, request: web.Request, data: Any, status: int = 200) -> web.Response:
        return _jr(data, status=status, headers=request.get(RATELIMIT) or {})

    # --- objects --------------------------------------------------------------------------------
    def bot_user(self) -> dict[str, Any]:
        return {"id": str(self.bot_id), "username": "Parley", "discriminator": "0", "global_name": "Parley",
                "avatar": None, "bot": True, "flags": 0, "verified": True, "mfa_enabled": False}

    def message_json(self, m: StoredMessage) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(m.id), "channel_id": str(m.channel_id), "author": m.author, "content": m.content,
            "timestamp": iso(), "edited_timestamp": iso() if m.edits else None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": [], "embeds": [],
            "pinned": False, "type": 0, "flags": m.flags, "components": m.components,
        }
        if m.poll is not None:
            data["poll"] = m.poll
        guild = self.channel_guild.get(m.channel_id)
        if guild:
            data["guild_id"] = str(guild)
        return data

    def _store(self, channel_id: int, content: str, *, flags: int = 0, author: dict[str, Any] | None = None,
               message_id: int | None = None) -> StoredMessage:
        m = StoredMessage(message_id or snowflake(), channel_id, author or self.bot_user(), content, flags)
        self.messages[m.id] = m
        self._stored(m)
        return m

    def _stored(self, m: StoredMessage) -> None:
        t = time.monotonic()
        m.history.append((t, m.content))
        if self.on_store:
            self.on_store(m.channel_id, m.id, m.content, t)

    # --- handlers -------------------------------------------------------------------------------
    async def _me(self, request: web.Request) -> web.Response:
        return _jr(self.bot_user())

    async def _application(self, request: web.Request) -> web.Response:
        return _jr({
            "id": str(self.app_id), "name": "Parley", "icon": None, "description": "A panel of AI experts",
            "bot_public": True, "bot_require_code_grant": False, "verify_key": "00" * 32, "flags": 0,
            "owner": {"id": str(self.owner_id), "username": "owner", "discriminator": "0", "avatar": None},
            "bot": self.bot_user(), "redirect_uris": [], "interactions_endpoint_url": None,
        })

    async def _put_commands(self, request: web.Request) -> web.Response:
        scope = request.match_info.get("guild", "global")
        out = []
        for c in request[JSON] or []:
            out.append({**c, "id": str(snowflake()), "application_id": str(self.app_id), "version": str(snowflake()),
                        **({"guild_id": scope} if scope != "global" else {})})
        self.commands[scope] = out
        return _jr(out)

    async def _get_commands(self, request: web.Request) -> web.Response:
        return _jr(self.commands.get(request.match_info.get("guild", "global"), []))

    async def _typing(self, request: web.Request) -> web.Response:
        """The typing indicator (https://discord.com/developers/docs/resources/channel#trigger-typing-indicator)."""
        channel = int(request.match_info["channel"])
        if channel not in self.threads and channel not in self.channel_guild:
            return _jr({"message": "Unknown Channel", "code": 10003}, status=404)
        return web.Response(status=204)

    def channel_json(self, channel_id: int) -> dict[str, Any]:
        if channel_id in self.threads:
            return self.threads[channel_id]
        guild = self.channel_guild.get(channel_id)
        return {"id": str(channel_id), "type": 0, "guild_id": str(guild or 0), "name": f"channel-{channel_id}",
                "position": 0, "permission_overwrites": [], "nsfw": False, "parent_id": None, "topic": None,
                "last_message_id": None, "rate_limit_per_user": 0, "flags": 0}

    async def _create_dm(self, request: web.Request) -> web.Response:
        recipient = int((request[JSON] or {}).get("recipient_id") or 0)
        if not recipient:
            return _jr({"message": "Invalid Form Body", "code": 50035}, status=400)
        channel = self.dms.setdefault(recipient, snowflake())
        return _jr({"id": str(channel), "type": 1, "last_message_id": None, "flags": 0,
                    "recipients": [{"id": str(recipient), "username": f"user-{recipient}", "discriminator": "0",
                                    "global_name": None, "avatar": None}]})

    async def _get_channel(self, request: web.Request) -> web.Response:
        channel = int(request.match_info["channel"])
        if channel not in self.threads and channel not in self.channel_guild:
            return _jr({"message": "Unknown Channel", "code": 10003}, status=404)
        return _jr(self.channel_json(channel))

    async def _create_message(self, request: web.Request) -> web.Response:
        body = request[JSON] or {}
        channel = int(request.match_info["channel"])
        m = self._store(channel, body.get("content") or "", flags=int(body.get("flags") or 0))
        m.components = body.get("components") or []
        if body.get("poll"):
            m.poll = _poll(body["poll"])
        return self._json(request, self.message_json(m))

    async def _get_message(self, request: web.Request) -> web.Response:
        m = self.messages.get(int(request.match_info["message"]))
        if m is None or m.channel_id != int(request.match_info["channel"]):
            return _jr({"message": "Unknown Message", "code": 10008}, status=404)
        return _jr(self.message_json(m))

    async def _edit_message(self, request: web.Request) -> web.Response:
        m = self.messages.get(int(request.match_info["message"]))
        if m is None or m.channel_id != int(request.match_info["channel"]):
            return _jr({"message": "Unknown Message", "code": 10008}, status=404)
        body = request[JSON] or {}
        if "content" in body:
            m.content = body["content"] or ""
        if "components" in body:
            m.components = body["components"] or []
        m.edits += 1
        self._stored(m)
        return self._json(request, self.message_json(m))

    async def _create_thread(self, request: web.Request) -> web.Response:
        body = request[JSON] or {}
        channel = int(request.match_info["channel"])
        mid = int(request.match_info["message"])
        name = str(body.get("name") or "")
        if not 1 <= len(name) <= 100:
            return _jr(
                {"message": "Invalid Form Body", "code": 50035,
                 "errors": {"name": {"_errors": [{"code": "BASE_TYPE_BAD_LENGTH",
                                                  "message": "Must be between 1 and 100 in length."}]}}},
                status=400,
            )
        guild = self.channel_guild.get(channel, 0)
        thread = {
            "id": str(mid), "type": 11, "guild_id": str(guild), "parent_id": str(channel), "name": name,
            "owner_id": str(self.bot_id), "message_count": 0, "member_count": 1, "rate_limit_per_user": 0,
            "flags": 0, "last_message_id": None,
            "thread_metadata": {"archived": False, "auto_archive_duration": body.get("auto_archive_duration", 1440),
                                "archive_timestamp": iso(), "locked": False},
            "member": {"id": str(mid), "user_id": str(self.bot_id), "join_timestamp": iso(), "flags": 0},
        }
        self.threads[mid] = thread
        self.channel_guild[mid] = guild
        if mid in self.messages:
            self.messages[mid].thread_id = mid
        return _jr(thread, status=201)

    async def _callback(self, request: web.Request) -> web.Response:
        body = request[JSON] or {}
        body = {**body, "interaction_id": request.match_info["id"], "token": request.match_info["token"]}
        self.interaction_responses.append(body)
        flags = int((body.get("data") or {}).get("flags") or 0)
        kind = body.get("type")
        resp: dict[str, Any] = {
            "interaction": {"id": request.match_info["id"], "type": 2, "response_message_loading": kind == 5,
                            "response_message_ephemeral": bool(flags & 64)},
        }
        if kind in (4, 5):
            mid = snowflake()
            resp["interaction"]["response_message_id"] = str(mid)
            data = body.get("data") or {}
            m = StoredMessage(mid, 0, self.bot_user(), data.get("content") or "", flags,
                              components=data.get("components") or [])
            m.history.append((time.monotonic(), m.content))
            self.webhook.setdefault(request.match_info["token"], [None])[0] = m
            resp["resource"] = {"type": kind, "message": {**self.message_json(m), "channel_id": "0"}}
        elif kind == 7 and (original := (self.webhook.get(request.match_info["token"]) or [None])[0]) is not None:
            # An update edits the message the component is on (the interaction's original, when the
            # test said which message that is).
            update: dict[str, Any] = dict(body.get("data") or {})  # type: ignore[arg-type]
            self._interaction_message(request.match_info["token"], update, original)
        return _jr(resp)

    def _interaction_message(self, token: str, body: dict[str, Any], m: StoredMessage | None) -> StoredMessage:
        if m is None:
            m = StoredMessage(snowflake(), 0, self.bot_user(), "", int(body.get("flags") or 0))
        else:
            m.edits += 1
        if "content" in body:
            m.content = body["content"] or ""
        if "components" in body:
            m.components = body["components"] or []
        if body.get("poll"):
            m.poll = _poll(body["poll"])
        m.history.append((time.monotonic(), m.content))
        return m

    async def _edit_original(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = dict(request[JSON] or {})  # type: ignore[call-overload]
        token = request.match_info["token"]
        self.original_edits.append({**body, "token": token})
        msgs = self.webhook.setdefault(token, [None])
        original = msgs[0] = self._interaction_message(token, body, msgs[0])
        return _jr(self.message_json(original))

    async def _followup(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = dict(request[JSON] or {})  # type: ignore[call-overload]
        token = request.match_info["token"]
        msgs = self.webhook.setdefault(token, [None])
        if self.followup_limit is not None and len(msgs) - 1 >= self.followup_limit:
            return _jr({"message": "Maximum number of follow-up messages reached", "code": 40094}, status=400)
        self.followups.append({**body, "token": token})
        m = self._interaction_message(token, body, None)
        msgs.append(m)
        return _jr(self.message_json(m))

    async def _edit_followup(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = dict(request[JSON] or {})  # type: ignore[call-overload]
        token = request.match_info["token"]
        mid = int(request.match_info["message"])
        msgs = self.webhook.get(token, [])
        for i, m in enumerate(msgs):
            if m is not None and m.id == mid and i > 0:
                self._interaction_message(token, body, m)
                return _jr(self.message_json(m))
        return _jr({"message": "Unknown Message", "code": 10008}, status=404)

    def interaction_messages(self, token: str) -> list[StoredMessage]:
        """What the interaction shows: its original response (if any) and its follow-ups."""
        return [m for m in self.webhook.get(token, []) if m is not None]

    # --- the gateway ----------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.Response:
        return _jr({"url": self.gateway_url})

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        started = len(self.sessions)
        return _jr({"url": self.gateway_url, "shards": self.shards,
                    "session_start_limit": {"total": 1000, "remaining": max(0, 1000 - started),
                                            "reset_after": 86_400_000, "max_concurrency": 1}})

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        """One gateway connection: HELLO, then IDENTIFY; heartbeats are acknowledged. A RESUME is
        refused (op 9, not resumable): the client identifies again and gets READY anew."""
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        session = GatewaySession(ws, secrets.token_hex(16))
        try:
            await self._send(session, {"op": 10, "d": {"heartbeat_interval": HEARTBEAT_MS}})
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op = payload.get("op")
                if op == 1:  # heartbeat
                    await self._send(session, {"op": 11})
                elif op == 2:
                    await self._identify(session, payload.get("d") or {})
                elif op == 6:  # resume
                    await self._send(session, {"op": 9, "d": False})
                # presence (3), voice (4), member requests (8): nothing to answer here
        finally:
            session.closed = True
            self._sockets.discard(ws)
        return ws

    async def _identify(self, session: GatewaySession, d: dict[str, Any]) -> None:
        token = str(d.get("token") or "").removeprefix("Bot ")
        if not token or (self.tokens and token not in self.tokens):
            await session.ws.close(code=AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return
        try:
            shard_id, count = (int(x) for x in d.get("shard") or (0, 1))
        except (TypeError, ValueError):
            shard_id, count = -1, 0
        if not 0 <= shard_id < count:
            await session.ws.close(code=INVALID_SHARD, message=b"Invalid shard.")
            return
        session.shard, session.intents = (shard_id, count), d.get("intents")
        self.sessions.append(session)
        mine = [g for g in self.guilds if session.receives(g)]
        await self._send_event(session, "READY", {
            "v": 10, "user": self.bot_user(), "guilds": [{"id": str(g), "unavailable": True} for g in mine],
            "session_id": session.session_id, "resume_gateway_url": self.gateway_url,
            "shard": [shard_id, count], "application": {"id": str(self.app_id), "flags": 0},
        })
        for g in mine:
            await self._send_event(session, "GUILD_CREATE", self.guilds[g])

    async def _send_event(self, session: GatewaySession, event: str, data: dict[str, Any]) -> None:
        async with session.lock:
            session.seq += 1
            session.events.append((event, data))
            await self._send(session, {"op": 0, "t": event, "s": session.seq, "d": data}, locked=True)

    async def _send(self, session: GatewaySession, payload: dict[str, Any], *, locked: bool = False) -> None:
        if session.ws.closed:
            return
        if locked:
            await session.ws.send_str(json.dumps(payload))
            return
        async with session.lock:
            await session.ws.send_str(json.dumps(payload))


def guild_json(guild_id: int, owner_id: int) -> dict[str, Any]:
    """A GUILD_CREATE payload: @everyone may do anything, no channels yet (``add_channel`` adds them)."""
    return {
        "id": str(guild_id), "name": f"guild-{guild_id % 10_000}", "icon": None, "splash": None,
        "discovery_splash": None, "owner_id": str(owner_id), "afk_channel_id": None, "afk_timeout": 300,
        "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0,
        "nsfw_level": 0,
        "roles": [{"id": str(guild_id), "name": "@everyone", "permissions": ALL_PERMISSIONS, "position": 0,
                   "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}],
        "emojis": [], "stickers": [], "features": [], "system_channel_id": None, "system_channel_flags": 0,
        "rules_channel_id": None, "vanity_url_code": None, "description": None, "banner": None, "premium_tier": 0,
        "preferred_locale": "en-US", "public_updates_channel_id": None, "joined_at": iso(), "large": False,
        "unavailable": False, "member_count": 2, "members": [], "channels": [], "threads": [], "voice_states": [],
        "presences": [], "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
        "premium_progress_bar_enabled": False,
    }


def _poll(create: dict[str, Any]) -> dict[str, Any]:
    """A poll create request as Discord returns it: answers numbered from 1."""
    return {"question": create["question"], "allow_multiselect": create.get("allow_multiselect", False),
            "layout_type": create.get("layout_type", 1), "expiry": iso(time.time() + 3600 * create["duration"]),
            "answers": [{"answer_id": i, "poll_media": a["poll_media"]}
                        for i, a in enumerate(create["answers"], 1)]}


def _jr(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with Discord's exact content type (discord.py compares it verbatim)."""
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={**(headers or {}), "Content-Type": "application/json"})


def _payload_json(raw: bytes) -> Any:
    """The ``payload_json`` part of a multipart body (discord.py sends files that way)."""
    m = re.search(rb'name="payload_json"\r\n(?:[^\r\n]*\r\n)*\r\n(.*?)\r\n--', raw, re.S)
    return json.loads(m.group(1)) if m else None
