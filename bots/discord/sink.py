"""Discord as a :class:`core.render.Sink`: one discussion's thread.

Each turn is its own plain-text message (content, not an embed; see
docs/discord.md for why), labelled with the persona and provider/model, edited
as the answer grows and continued in a new message past the 2,000-character
limit.

Budgets. Discord limits message writes per channel (a thread is a channel):
about 5 per 5 seconds, shared by creates and edits. :class:`ChannelBudgets`
keeps one :class:`TokenBucket` per channel that every renderer writing there
draws from, sized to stay under the limit in any window, plus one bucket for
the bot-wide limit (50 requests per second).

429s. discord.py sleeps on a 429 and retries by itself, which would hide the
429 from the renderer and let a stream fall behind a queue of stale edits. The
sink's calls run under :func:`fail_fast`, and the aiohttp trace from
:func:`rate_limit_trace` turns a 429 seen there into
:class:`core.render.RateLimited`: the renderer pauses that channel's bucket for
``retry_after`` and re-sends the latest text, so nothing is lost or duplicated.
One-off calls (the parent message, a thread) keep discord.py's own handling.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import discord

from core.events import DiscussionFinished, DiscussionStarted, Event, StageStarted, TurnInfo
from core.render import Frame, MessageClosed, RateLimited, TokenBucket, WindowBudget, summary_markdown
from core.store import Store

log = logging.getLogger("parley.discord")

FRONT_END = "discord"
#: Discord's hard limit for message content.
CONTENT_LIMIT = 2000
#: Characters of answer per message: the rest of the 2,000 is kept for the label line,
#: the "writing" mark and a failure notice.
MESSAGE_LIMIT = 1800
HEADER_LIMIT = 150
#: Discord's per-channel message bucket (creates and edits), and the bot-wide limit.
CHANNEL_LIMIT, CHANNEL_WINDOW = 5, 5.0
GLOBAL_PER_SECOND = 50
STREAMING_MARK = " …"
INTERRUPTED = "⚠️ Interrupted: Parley restarted while this reply was being written. Ask again to rerun it."
THREAD_INTERRUPTED = "⚠️ Interrupted: Parley restarted before this discussion finished. Ask again to rerun it."
NO_MENTIONS = discord.AllowedMentions.none()

T = TypeVar("T")

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


def window_bucket(limit: int, window: float, name: str) -> WindowBudget:
    """At most ``limit`` calls in any sliding ``window`` (held 5% longer for network
    jitter), so Discord's fixed windows, wherever they start, never see one more.
    The whole allowance is usable at once, and finals keep their reserved slots."""
    return WindowBudget(limit, window, name=name)


@dataclass
class ChannelBudgets:
    """The write budgets of one bot: a bucket per channel and one for the whole bot."""

    limit: int = CHANNEL_LIMIT
    window: float = CHANNEL_WINDOW
    global_per_second: float = GLOBAL_PER_SECOND
    channels: dict[int, WindowBudget] = field(default_factory=dict)
    bot: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        self.bot = TokenBucket(self.global_per_second * 0.9, max(1, int(self.global_per_second // 5)), name="global")

    def channel(self, channel_id: int) -> WindowBudget:
        bucket = self.channels.get(channel_id)
        if bucket is None:
            bucket = self.channels[channel_id] = window_bucket(self.limit, self.window, f"channel:{channel_id}")
        return bucket


# --- permissions --------------------------------------------------------------------------------------

#: What each operation needs, as Discord names the permission in the UI.
NEEDS = {
    "send": "Send Messages",
    "send_thread": "Send Messages in Threads",
    "create_thread": "Create Public Threads",
    "read_history": "Read Message History",
    "embed": "Embed Links",
    "view": "View Channel",
}
#: Permissions.<attr> for the pre-check of an interaction's ``app_permissions``.
PERMISSION_ATTRS = {
    "send": "send_messages",
    "send_thread": "send_messages_in_threads",
    "create_thread": "create_public_threads",
    "read_history": "read_message_history",
    "embed": "embed_links",
    "view": "view_channel",
}


def permission_message(op: str, error: discord.HTTPException | None = None, where: str = "this channel") -> str:
    """A sentence naming what is missing and where to grant it."""
    code = getattr(error, "code", 0)
    if code == 50001:  # Missing Access
        op = "view"
    if code in (50083, 50084):
        return "⚠️ This thread is archived or locked, so I can't write in it. Unarchive it or ask in the channel."
    if code == 10003:
        return "⚠️ The channel or thread was deleted, so I stopped writing."
    need = NEEDS.get(op, "Send Messages")
    return (
        f"⚠️ I'm missing the **{need}** permission in {where}. Ask a server admin to grant it to the Parley role "
        f"(Server Settings → Roles, or the channel's Permissions), then try again."
    )


def missing_permissions(perms: discord.Permissions, ops: list[str]) -> list[str]:
    return [NEEDS[op] for op in ops if not getattr(perms, PERMISSION_ATTRS[op])]


# --- text ---------------------------------------------------------------------------------------------

_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")


def to_discord(text: str) -> str:
    """Core's chat text uses ``*bold*`` (Slack style); Discord bolds with ``**``."""
    return _BOLD.sub(r"**\1**", text)


def header(turn: TurnInfo, part: int = 1) -> str:
    who = f"{turn.emoji + ' ' if turn.emoji else ''}{turn.persona_name}" if turn.persona_name else ""
    where = f"{turn.provider}/{turn.model}"[:80]
    stage = ""
    if turn.stage != "answer":
        stage = f" · {turn.stage}" + (f" {turn.round}" if turn.round else "")
    cont = f" (part {part})" if part > 1 else ""
    line = f"**{who[:60]}** · `{where}`{stage}{cont}" if who else f"`{where}`{stage}{cont}"
    return line[:HEADER_LIMIT]


def message_content(frame: Frame) -> str:
    """What one turn message shows: the label line, the text, and the state."""
    body = frame.text
    if frame.state == "streaming":
        body = (body + STREAMING_MARK) if body else "…"
    text = header(frame.turn, frame.part) + "\n" + body
    if frame.state == "failed":
        notice = f"\n\n⚠️ {frame.notice or 'failed'}"
        room = CONTENT_LIMIT - len(text)
        if len(notice) > room:  # only in extreme cases; the summary repeats the reason
            notice = notice[: max(0, room - 1)] + "…" if room > 8 else ""
        text += notice
    return text[:CONTENT_LIMIT]


def chunks(text: str, limit: int = CONTENT_LIMIT) -> list[str]:
    """Split a long informational text at line ends into messages of at most ``limit``."""
    out: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            if current:
                out.append(current)
                current = ""
            out.append(line[:limit])
            line = line[limit:]
        if len(current) + len(line) > limit:
            out.append(current)
            current = ""
        current += line
    if current.strip():
        out.append(current)
    return [c.rstrip("\n") for c in out] or [""]


# --- the sink -----------------------------------------------------------------------------------------


@dataclass
class DiscordRef:
    channel_id: int
    message_id: int
    post_id: int | None = None
    shown: str = ""
    claim: WindowBudget | None = None  # the budget this message's final edit is reserved in

    def dumps(self) -> str:
        return json.dumps({"kind": "message", "channel": self.channel_id, "message": self.message_id})


class PermissionProblem(Exception):
    """Writing here cannot succeed until someone changes a setting; carries the user-facing sentence."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DiscordSink:
    """Render one discussion into one Discord channel or thread."""

    limit = MESSAGE_LIMIT
    min_interval = 1.0

    def __init__(
        self,
        client: discord.Client,
        channel_id: int,
        budgets: ChannelBudgets,
        *,
        in_thread: bool = True,
        store: Store | None = None,
        discussion_id: str | None = None,
        on_problem: Callable[[str], Awaitable[Any]] | None = None,
        on_call: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.channel_id = channel_id
        self.channel = client.get_partial_messageable(channel_id)
        self.budgets = budgets
        self.post_budget = budgets.channel(channel_id)
        self.edit_budget = self.post_budget  # creates and edits share Discord's per-channel bucket
        self.in_thread = in_thread
        self.store = store
        self.discussion_id = discussion_id
        self.on_problem = on_problem
        self.on_call = on_call
        self.problem: str | None = None

    # --- Sink protocol ------------------------------------------------------------------------------
    async def post(self, frame: Frame) -> DiscordRef:
        if self.problem is not None:
            return DiscordRef(self.channel_id, 0)
        content = message_content(frame)
        try:
            msg = await self._call(
                "post", lambda: self.channel.send(content=content, allowed_mentions=NO_MENTIONS, suppress_embeds=True)
            )
        except PermissionProblem:
            return DiscordRef(self.channel_id, 0)
        ref = DiscordRef(self.channel_id, msg.id, shown=content)
        if frame.state == "streaming":
            ref.claim = self.post_budget
            ref.claim.claim(1)
        if self.store is not None and self.discussion_id is not None:
            ref.post_id = self.store.record_post(
                self.discussion_id, frame.turn.turn_id, FRONT_END, str(self.channel_id), ref.dumps()
            )
        self._saved(ref, frame)
        return ref

    async def edit(self, ref: DiscordRef, frame: Frame) -> None:
        if frame.state != "streaming":
            self._release(ref)
        if self.problem is not None or not ref.message_id:
            return
        content = message_content(frame)
        message = self.channel.get_partial_message(ref.message_id)
        try:
            await self._call("edit", lambda: message.edit(content=content, allowed_mentions=NO_MENTIONS))
        except discord.NotFound:
            # Deleted by someone: what it showed stays gone, the rest continues in a new message.
            self._close(ref)
            raise MessageClosed() from None
        except PermissionProblem:
            return
        ref.shown = content
        self._saved(ref, frame)

    @staticmethod
    def shows(event: Event) -> bool:
        """Stage titles and the summary get a message; the parent already heads the thread."""
        return isinstance(event, (StageStarted, DiscussionFinished))

    async def notice(self, event: Event) -> None:
        if self.problem is not None:
            return
        if isinstance(event, DiscussionStarted):
            return  # the parent message (or the mention) heads the thread
        if isinstance(event, StageStarted):
            text = f"**{event.title}**"
        elif isinstance(event, DiscussionFinished):
            text = to_discord(summary_markdown(event))
        else:
            return
        for i, part in enumerate(chunks(text)):
            if i:  # the renderer paid for the first message
                await self.post_budget.acquire(0.5)
            with contextlib.suppress(PermissionProblem):
                await self._call(
                    "post", lambda p=part: self.channel.send(content=p, allowed_mentions=NO_MENTIONS, suppress_embeds=True)
                )

    # --- helpers ------------------------------------------------------------------------------------
    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        if self.on_call is not None:
            self.on_call(op)
        await self.budgets.bot.acquire(0.0)
        try:
            with fail_fast():
                return await fn()
        except DiscordRateLimited as rl:
            if rl.is_global:
                self.budgets.bot.pause(rl.retry_after)
            raise
        except discord.Forbidden as e:
            await self._problem(permission_message("send_thread" if self.in_thread else "send", e,
                                                   "this thread" if self.in_thread else "this channel"))
            raise PermissionProblem(self.problem or "") from None
        except discord.NotFound as e:
            if op == "edit" and e.code == 10008:  # Unknown Message
                raise
            await self._problem(permission_message(op, e))
            raise PermissionProblem(self.problem or "") from None
        except discord.HTTPException as e:
            if 400 <= e.status < 500:
                # A request Discord will never accept (archived thread, bad form): stop, say why.
                log.warning("Discord refused a %s (%s %s)", op, e.status, e.code)
                await self._problem(permission_message(op, e) if e.code in (50083, 50084)
                                    else f"⚠️ Discord refused a message ({e.status}, code {e.code}); I stopped here.")
                raise PermissionProblem(self.problem or "") from None
            raise

    async def _problem(self, message: str) -> None:
        if self.problem is not None:
            return
        self.problem = message
        log.warning("discord channel %s: %s", self.channel_id, message)
        if self.on_problem is not None:
            with contextlib.suppress(Exception):
                await self.on_problem(message)

    def _saved(self, ref: DiscordRef, frame: Frame) -> None:
        if self.store is None or ref.post_id is None:
            return
        if frame.state == "streaming":
            self.store.update_post_text(ref.post_id, ref.shown)
        else:
            self._close(ref)

    @staticmethod
    def _release(ref: DiscordRef) -> None:
        if ref.claim is not None:
            ref.claim.claim(-1)
            ref.claim = None

    def abandon(self, ref: DiscordRef) -> None:
        """The renderer gave up on this message (Discord kept refusing writes)."""
        self._close(ref)

    def _close(self, ref: DiscordRef) -> None:
        self._release(ref)
        if self.store is not None and ref.post_id is not None:
            with contextlib.suppress(Exception):
                self.store.close_posts([ref.post_id])
            ref.post_id = None
