"""Discord's rate limits: 429s surfaced to the renderer, and the write budgets.

Budgets. Discord limits message writes per channel (a thread is a channel):
about 5 per 5 seconds, shared by creates and edits. :class:`ChannelBudgets`
keeps one :class:`~core.budget.WindowBudget` per channel that every renderer
writing there draws from, sized to stay under the limit in any window, plus one
bucket for the bot-wide limit (50 requests per second).

429s. discord.py sleeps on a 429 and retries by itself, which would hide the
429 from the renderer and let a stream fall behind a queue of stale edits. The
sink's calls run under :func:`fail_fast`, and the aiohttp trace from
:func:`rate_limit_trace` turns a 429 seen there into
:class:`core.sink.RateLimited`: the renderer pauses that channel's bucket for
``retry_after`` and re-sends the latest text, so nothing is lost or duplicated.
One-off calls (the parent message, a thread) keep discord.py's own handling.

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

#: Discord's per-channel message bucket (creates and edits), and the bot-wide limit.
CHANNEL_LIMIT, CHANNEL_WINDOW = 5, 5.0
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


def rate_limit_trace() -> aiohttp.TraceConfig:
    """An aiohttp trace for ``discord.Client(http_trace=...)`` that surfaces 429s under :func:`fail_fast`.

    Only a real Discord 429 (JSON body or the ``Via`` header) is converted; a
    Cloudflare ban stays discord.py's HTTPException.
    """

    async def on_request_end(session: Any, ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        resp = params.response
        if resp.status != 429 or not _FAIL_FAST.get():
            return
        data: Any = None
        with contextlib.suppress(Exception):
            data = await resp.json(content_type=None)
        if not isinstance(data, dict) and not resp.headers.get("Via"):
            return
        retry: Any = (data or {}).get("retry_after") or resp.headers.get("Retry-After") or 1.0
        try:
            seconds = max(0.0, float(retry))
        except (TypeError, ValueError):
            seconds = 1.0
        is_global = bool((data or {}).get("global")) or resp.headers.get("X-RateLimit-Global") == "true"
        raise DiscordRateLimited(seconds, is_global=is_global)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    return trace


# --- budgets ------------------------------------------------------------------------------------------


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
        self.bot = TokenBucket(self.global_per_second * 0.9, max(1, int(self.global_per_second // 5)), name="global")
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
