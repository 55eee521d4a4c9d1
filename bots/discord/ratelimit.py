"""Discord's rate limits: 429s surfaced to the renderer, and the write budgets.

Budgets. Discord limits message writes per channel (a thread is a channel):
about 5 per 5 seconds, shared by creates and edits. :class:`ChannelBudgets`
keeps one :class:`~core.budget.WindowBudget` per channel that every renderer
writing there draws from, sized to stay under the limit in any window, plus one
bucket for the bot-wide limit (:data:`GLOBAL_PER_SECOND`).

The global limit counts every request made with the bot token, whatever the
route: the login, the parent message and thread of a discussion, recovery,
command sync and DMs as well as a thread's streaming writes. So the bot-wide
bucket is drawn on by the HTTP session itself (:class:`RateLimitTrace`, bound by
:func:`draw_global`): each request carrying the bot's ``Authorization`` takes one
call before it is sent, retries included. Interaction endpoints (the deferred
response, its edits and follow-ups, authenticated by the interaction token in
the path) are outside the global limit and take none.

429s. discord.py sleeps on a 429 and retries by itself, which would hide the
429 from the renderer and let a stream fall behind a queue of stale edits. The
sink's calls run under :func:`fail_fast`, and the aiohttp trace from
:func:`rate_limit_trace` turns a 429 seen there into
:class:`core.sink.RateLimited`: the renderer pauses that channel's bucket for
``retry_after`` and re-sends the latest text, so nothing is lost or duplicated.
One-off calls (the parent message, a thread) keep discord.py's own handling. A
global 429 (``"global": true``), from any call, pauses the bot-wide bucket.

Shared. Shard processes of one bot (and replicas) share these limits through the
coordinator (:meth:`ChannelBudgets.share`, Redis): the bot-wide bucket is one key
for every process, each channel's (or interaction webhook's) bucket one key per
channel, and a 429 that one process sees pauses that key for all of them.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from core.budget import TokenBucket, WindowBudget
from core.coord import Coordinator
from core.sink import RateLimited

#: Discord's per-channel message bucket (creates and edits).
CHANNEL_LIMIT, CHANNEL_WINDOW = 5, 5.0
#: Discord's global limit: requests per second per bot token, every route but the interaction
#: endpoints (https://discord.com/developers/docs/topics/rate-limits#global-rate-limit). The one
#: place it is set: the bot-wide bucket (:func:`global_bucket`) is sized from it.
GLOBAL_PER_SECOND = 50

# --- 429s as RateLimited ------------------------------------------------------------------------------

_FAIL_FAST: contextvars.ContextVar[bool] = contextvars.ContextVar("parley_discord_fail_fast", default=False)


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """Within this block a Discord 429 raises RateLimited instead of being slept on by discord.py."""
    token = _FAIL_FAST.set(True)
    try:
        yield
    finally:
        _FAIL_FAST.reset(token)


class DiscordRateLimited(RateLimited):
    def __init__(self, retry_after: float, *, is_global: bool = False) -> None:
        super().__init__(retry_after)
        self.is_global = is_global


class RateLimitTrace(aiohttp.TraceConfig):
    """The aiohttp trace of ``discord.Client(http_trace=...)``: Discord's limits at the HTTP session.

    - Before a request made with the bot token is sent (each try), one call is taken from
      :attr:`bucket`, the bot-wide bucket, when one is bound (:func:`draw_global`).
    - A 429 that is Discord's (JSON body or the ``Via`` header; a Cloudflare ban stays
      discord.py's HTTPException): a global one pauses :attr:`bucket` for ``retry_after``
      (every process sharing it pauses); under :func:`fail_fast` it is raised as
      :class:`DiscordRateLimited` instead of being slept on by discord.py.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bucket: TokenBucket | None = None
        self.on_request_start.append(self._start)
        self.on_request_end.append(self._end)

    async def _start(self, session: Any, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        if self.bucket is not None and params.headers.get("Authorization", "").startswith("Bot "):
            await self.bucket.acquire(0.0)

    async def _end(self, session: Any, ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        resp = params.response
        if resp.status != 429:
            return
        data: Any = None
        with contextlib.suppress(Exception):
            data = await resp.json(content_type=None)  # read once: discord.py reads the cached body
        if not isinstance(data, dict) and not resp.headers.get("Via"):
            return
        retry: Any = (data or {}).get("retry_after") or resp.headers.get("Retry-After") or 1.0
        try:
            seconds = max(0.0, float(retry))
        except (TypeError, ValueError):
            seconds = 1.0
        is_global = bool((data or {}).get("global")) or resp.headers.get("X-RateLimit-Global") == "true"
        if is_global and self.bucket is not None:
            self.bucket.pause(seconds)
        if _FAIL_FAST.get():
            raise DiscordRateLimited(seconds, is_global=is_global)


def rate_limit_trace() -> RateLimitTrace:
    """The trace for ``discord.Client(http_trace=...)`` (:class:`RateLimitTrace`), no bucket bound yet."""
    return RateLimitTrace()


def draw_global(client: Any, bucket: TokenBucket) -> bool:
    """Make every request ``client`` sends with the bot token draw on ``bucket`` (the bot-wide
    bucket of :class:`ChannelBudgets`). Returns whether it could: a client made by
    :func:`bots.discord.config.make_client` carries the trace that does it."""
    trace = getattr(getattr(client, "http", None), "http_trace", None)
    if not isinstance(trace, RateLimitTrace):
        return False
    trace.bucket = bucket
    return True


# --- budgets ------------------------------------------------------------------------------------------


def global_bucket(per_second: float = GLOBAL_PER_SECOND) -> TokenBucket:
    """The bot-wide bucket: 80% of the limit per second with a burst of 5%, so that any one
    second, wherever it starts, holds at most 85% of the limit (42 of 50). The rest is margin:
    a call is granted a little before Discord counts it, and the time between varies (the
    network, a busy event loop: most at a surge, when a process takes many requests at once).
    A burst of the whole limit followed by the rate would put limit + rate in one second."""
    return TokenBucket(per_second * 0.8, max(1, int(per_second // 20)), name="global")


def window_bucket(
    limit: int, window: float, name: str, *, clock: Callable[[], float] = time.monotonic
) -> WindowBudget:
    """At most ``limit`` calls in any sliding ``window`` (held 5% longer for network
    jitter), so Discord's fixed windows, wherever they start, never see one more.
    The whole allowance is usable at once, and finals keep their reserved slots."""
    return WindowBudget(limit, window, name=name, clock=clock)


@dataclass
class ChannelBudgets:
    """The write budgets of one bot: a bucket per channel and one for the whole bot.

    A long-running bot writes in ever new threads, so at most once a window the
    idle buckets are dropped: no claim (no message awaits its final edit), no
    waiter, no pause, nothing spent within the window. A bucket made again for
    that channel starts in the same state, so no limit is forgotten; sinks look
    their bucket up at each use (:class:`bots.discord.sink.DiscordSink`).
    """

    limit: int = CHANNEL_LIMIT
    window: float = CHANNEL_WINDOW
    global_per_second: float = GLOBAL_PER_SECOND
    channels: dict[int, WindowBudget] = field(default_factory=dict)
    bot: TokenBucket = field(init=False)
    clock: Callable[[], float] = time.monotonic
    #: The coordinator these limits are shared through, and the bot's key there (:meth:`share`).
    coord: Coordinator | None = None
    scope: str = ""
    _swept: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.bot = global_bucket(self.global_per_second)
        self._swept = self.clock()
        if self.coord is not None:
            self.share(self.coord, self.scope)

    def _key(self, what: str) -> str:
        return f"discord:{self.scope}:{what}" if self.scope else f"discord:{what}"

    def share(self, coord: Coordinator | None, scope: str = "") -> ChannelBudgets:
        """Share these limits with every process of this bot through ``coord`` (``scope``: a
        name for the bot, e.g. its application id, when several bots use one Redis); a
        coordinator of this process only (no Redis) changes nothing. Returns self."""
        self.coord, self.scope = coord, scope
        if coord is None or not coord.shared:
            return self
        self.bot.share(coord, self._key("global"))
        for channel_id, bucket in self.channels.items():
            bucket.share(coord, self._key(f"channel:{channel_id}"))
        return self

    def channel(self, channel_id: int) -> WindowBudget:
        now = self.clock()
        if now - self._swept >= self.window:
            self._swept = now
            for idle in [c for c, b in self.channels.items() if c != channel_id and b.idle()]:
                del self.channels[idle]
        bucket = self.channels.get(channel_id)
        if bucket is None:
            bucket = self.channels[channel_id] = window_bucket(
                self.limit, self.window, f"channel:{channel_id}", clock=self.clock
            )
            if self.coord is not None and self.coord.shared:
                bucket.share(self.coord, self._key(f"channel:{channel_id}"))
        return bucket
