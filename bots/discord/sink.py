"""Discord as a :class:`core.sink.Sink`: one discussion's thread.

Each turn is its own message (:mod:`bots.discord.format`), edited as the answer
grows and continued in a new message past the 2,000-character limit. Creates
and edits share the channel's budget (:mod:`bots.discord.ratelimit`); a 429
reaches the renderer as :class:`core.sink.RateLimited`.

A write Discord refuses (a permission missing, the thread archived or deleted)
is said once to the person who asked (``on_problem``) and raised as
:class:`core.sink.Undeliverable`; from then on every write of this sink raises
it at once, without calling Discord. The store is the ledger's business
(:mod:`core.ledger`): this sink only says how to find a message again.

A notice longer than one message (a long summary) that meets a 429 part-way is
retried by the renderer; the sink remembers how many of its messages went out
and resumes after them, so no part is posted twice.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import discord

from bots.discord.format import MESSAGE_LIMIT, NO_MENTIONS, chunks, doc_to_markdown, message_content
from bots.discord.permissions import permission_message
from bots.discord.ratelimit import ChannelBudgets, DiscordRateLimited, fail_fast
from core.budget import TokenBucket
from core.events import DiscussionFinished, StageStarted
from core.present import summary_doc
from core.sink import Frame, MessageClosed, Notice, Sink, Undeliverable

log = logging.getLogger("parley.discord")

FRONT_END = "discord"

T = TypeVar("T")


@dataclass
class DiscordRef:
    channel_id: int
    message_id: int
    shown: str = ""  # the content Discord shows now (for the restart note)


class DiscordSink(Sink):
    """Render one discussion into one Discord channel or thread."""

    limit = MESSAGE_LIMIT
    min_interval = 1.0
    front_end = FRONT_END

    def __init__(
        self,
        client: discord.Client,
        channel_id: int,
        budgets: ChannelBudgets,
        *,
        in_thread: bool = True,
        on_problem: Callable[[str], Awaitable[Any]] | None = None,
        on_call: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.channel_id = channel_id
        self.destination = str(channel_id)
        self.channel = client.get_partial_messageable(channel_id)
        self.budgets = budgets
        self.in_thread = in_thread
        self.on_problem = on_problem
        self.on_call = on_call
        self.problem: str | None = None  # why Discord will not take writes here: set once, then final
        #: The notice being posted and how many of its messages are out: a retry resumes there.
        self._notice: tuple[Notice, int] | None = None

    # Creates and edits share Discord's per-channel bucket, looked up at each use rather than kept:
    # ChannelBudgets forgets an idle bucket (no claim, no waiter, nothing spent in the last window).
    @property
    def post_budget(self) -> TokenBucket:  # type: ignore[override]
        return self.budgets.channel(self.channel_id)

    @property
    def edit_budget(self) -> TokenBucket:  # type: ignore[override]
        return self.budgets.channel(self.channel_id)

    # --- Sink -----------------------------------------------------------------------------------------
    async def post(self, frame: Frame) -> DiscordRef:
        content = message_content(frame)
        msg = await self._call("post", lambda: self._send(content))
        return DiscordRef(self.channel_id, msg.id, shown=content)

    async def edit(self, ref: DiscordRef, frame: Frame) -> None:
        content = message_content(frame)
        message = self.channel.get_partial_message(ref.message_id)
        try:
            await self._call("edit", lambda: message.edit(content=content, allowed_mentions=NO_MENTIONS))
        except discord.NotFound:
            # Deleted by someone: what it showed stays gone, the rest continues in a new message.
            raise MessageClosed() from None
        ref.shown = content

    def shows(self, event: Notice) -> bool:
        """Stage titles and the summary get a message; the parent already heads the thread."""
        return isinstance(event, (StageStarted, DiscussionFinished))

    async def notice(self, event: Notice) -> None:
        if isinstance(event, StageStarted):
            text = f"**{event.title}**"
        elif isinstance(event, DiscussionFinished):
            text = doc_to_markdown(summary_doc(event))
        else:
            return  # the parent message (or the mention) heads the thread
        parts = chunks(text)
        start = self._notice[1] if self._notice is not None and self._notice[0] is event else 0
        for i in range(start, len(parts)):
            if i > start:  # the renderer paid for the first message of this attempt
                await self.post_budget.acquire(0.5)
            await self._call("post", functools.partial(self._send, parts[i]))
            self._notice = (event, i + 1)
        self._notice = None

    def record(self, ref: DiscordRef) -> dict[str, Any]:
        return {"kind": "message", "channel": ref.channel_id, "message": ref.message_id}

    def shown(self, ref: DiscordRef) -> str:
        return ref.shown

    # --- helpers --------------------------------------------------------------------------------------
    def _send(self, content: str) -> Awaitable[discord.Message]:
        return self.channel.send(content=content, allowed_mentions=NO_MENTIONS, suppress_embeds=True)

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        if self.problem is not None:
            raise Undeliverable(self.problem)
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
            op, where = ("send_thread", "this thread") if self.in_thread else ("send", "this channel")
            raise await self._refused(permission_message(op, e, where)) from None
        except discord.NotFound as e:
            if op == "edit" and e.code == 10008:  # Unknown Message: the caller closes that one message
                raise
            raise await self._refused(permission_message(op, e)) from None
        except discord.HTTPException as e:
            if not 400 <= e.status < 500:
                raise  # Discord's own trouble: the renderer retries
            # A request Discord will never accept (archived thread, bad form): stop, say why.
            log.warning("Discord refused a %s (%s %s)", op, e.status, e.code)
            raise await self._refused(
                permission_message(op, e) if e.code in (50083, 50084)
                else f"⚠️ Discord refused a message ({e.status}, code {e.code}); I stopped here."
            ) from None

    async def _refused(self, message: str) -> Undeliverable:
        """Remember why this channel takes no more writes and tell the person once; the error to raise."""
        if self.problem is None:
            self.problem = message
            log.warning("discord channel %s: %s", self.channel_id, message)
            if self.on_problem is not None:
                with contextlib.suppress(Exception):
                    await self.on_problem(message)
        return Undeliverable(self.problem)
