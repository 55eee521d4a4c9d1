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
retried by the renderer; the sink remembers how many of its writes went out and
resumes after them, so no part is posted twice.

Progress and actions (:mod:`bots.discord.components`): a consensus gets one compact
stage line at the top of its thread, edited in place as each stage starts and marked
✅ (or ✗ where it failed) when the discussion ends; a finished answer's last message
carries its buttons (``Frame.actions``); a summary's last message carries the buttons
of :func:`core.actions.under_summary` and, after a compare, a native poll for the best
answer (``on_poll`` records which answer is which turn).

:class:`InteractionSink` renders a discussion through the interaction itself, for a
user-installed Parley in a server it is not a member of (or a group DM): the original
response and at most 5 follow-ups (Discord's limit for user-installed apps), one per
turn until the last, which then carries the remaining turns and the summary together.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import discord

from bots.discord import components
from bots.discord.format import (
    CONTENT_LIMIT,
    MESSAGE_LIMIT,
    NO_MENTIONS,
    chunks,
    doc_to_markdown,
    message_content,
)
from bots.discord.permissions import permission_message
from bots.discord.ratelimit import ChannelBudgets, fail_fast
from core.actions import Action, under_summary
from core.budget import TokenBucket
from core.events import DiscussionFinished, DiscussionStarted, StageStarted
from core.present import summary_doc
from core.sink import Frame, MessageClosed, Notice, Sink, Undeliverable

log = logging.getLogger("parley.discord")

FRONT_END = "discord"

T = TypeVar("T")
#: Told which poll answer is which turn: (message id, discussion id, {answer id: turn id}).
OnPoll = Callable[[int, str, dict[int, str]], None]


class Progress:
    """A consensus's stages, and which one runs: what the stage line shows."""

    def __init__(self) -> None:
        self.stages: list[str] = []
        self.current = 0
        self.prompt = ""

    def start(self, event: DiscussionStarted) -> bool:
        """A discussion starts; whether it has a stage line (a consensus). Its first stage starts at once."""
        self.stages, self.current, self.prompt = list(event.stages), 0, event.prompt
        return len(self.stages) > 1

    def moves(self, event: StageStarted) -> bool:
        """Whether ``event`` changes the line (the first stage is already shown running)."""
        return bool(self.stages) and self._index(event) != self.current

    def advance(self, event: StageStarted) -> None:
        self.current = self._index(event)

    def _index(self, event: StageStarted) -> int:
        return self.stages.index(event.title) if event.title in self.stages else min(
            self.current + 1, len(self.stages) - 1)

    def line(self, ended: str | None = None) -> str:
        return components.stage_line(self.stages, self.current, ended=ended)


def summary_parts(event: DiscussionFinished) -> tuple[list[str], list[Action], list[Action]]:
    """A summary's messages, the buttons under it and its votes (a poll after a compare)."""
    actions = under_summary(event, event.mode)
    votes = [a for a in actions if a.kind == "vote"]
    return chunks(doc_to_markdown(summary_doc(event))), [a for a in actions if a.kind != "vote"], votes


def _view(actions: tuple[Action, ...] | list[Action]) -> dict[str, Any]:
    """``view=`` for a message that shows ``actions`` (nothing when there are none)."""
    return {"view": components.view(components.button_rows(actions))} if actions else {}


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
        on_poll: OnPoll | None = None,
    ) -> None:
        self.client = client
        self.on_poll = on_poll
        self.progress = Progress()
        self._stage_message: int | None = None
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
        msg = await self._call("post", lambda: self._send(content, **_view(frame.actions)))
        return DiscordRef(self.channel_id, msg.id, shown=content)

    async def edit(self, ref: DiscordRef, frame: Frame) -> None:
        content = message_content(frame)
        message = self.channel.get_partial_message(ref.message_id)
        try:
            await self._call("edit", lambda: message.edit(content=content, allowed_mentions=NO_MENTIONS,
                                                          **_view(frame.actions)))
        except discord.NotFound:
            # Deleted by someone: what it showed stays gone, the rest continues in a new message.
            raise MessageClosed() from None
        ref.shown = content

    def shows(self, event: Notice) -> bool:
        """A consensus's stage line (posted at the start, edited as stages start) and the summary;
        the parent message already heads the thread."""
        if isinstance(event, DiscussionStarted):
            return self.progress.start(event)
        if isinstance(event, StageStarted):
            return self._stage_message is not None and self.progress.moves(event)
        return isinstance(event, DiscussionFinished)

    async def notice(self, event: Notice) -> None:
        steps: list[Callable[[], Awaitable[Any]]] = []
        if isinstance(event, DiscussionStarted):
            steps.append(self._post_stage_line)
        elif isinstance(event, StageStarted):
            self.progress.advance(event)
            steps.append(functools.partial(self._edit_stage_line, self.progress.line()))
        elif isinstance(event, DiscussionFinished):
            if self._stage_message is not None:
                steps.append(functools.partial(self._edit_stage_line, self.progress.line(event.status)))
            parts, buttons, votes = summary_parts(event)
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                steps.append(functools.partial(self._post_summary, event, part, buttons if last else [],
                                               votes if last else []))
        start = self._notice[1] if self._notice is not None and self._notice[0] is event else 0
        for i in range(start, len(steps)):
            if i > start:  # the renderer paid for the first write of this attempt
                await self.post_budget.acquire(0.5)
            await steps[i]()
            self._notice = (event, i + 1)
        self._notice = None

    async def _post_stage_line(self) -> None:
        msg = await self._call("post", functools.partial(self._send, self.progress.line()))
        self._stage_message = msg.id

    async def _edit_stage_line(self, text: str) -> None:
        assert self._stage_message is not None
        message = self.channel.get_partial_message(self._stage_message)
        try:
            await self._call("edit", lambda: message.edit(content=text, allowed_mentions=NO_MENTIONS))
        except discord.NotFound:
            self._stage_message = None  # deleted: the thread reads on without it

    async def _post_summary(self, event: DiscussionFinished, text: str, buttons: list[Action],
                            votes: list[Action]) -> None:
        extra = _view(buttons)
        chosen: list[str] = []
        if len(votes) >= 2 and self.on_poll is not None:
            extra["poll"], chosen = components.poll_for(event, votes, self.progress.prompt)
        msg = await self._call("post", functools.partial(self._send, text, **extra))
        if chosen and self.on_poll is not None:
            self.on_poll(msg.id, event.discussion_id, components.poll_answers(msg, chosen))

    def record(self, ref: DiscordRef) -> dict[str, Any]:
        return {"kind": "message", "channel": ref.channel_id, "message": ref.message_id}

    def shown(self, ref: DiscordRef) -> str:
        return ref.shown

    # --- helpers --------------------------------------------------------------------------------------
    def _send(self, content: str, **extra: Any) -> Awaitable[discord.Message]:
        return self.channel.send(content=content, allowed_mentions=NO_MENTIONS, suppress_embeds=True, **extra)

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        if self.problem is not None:
            raise Undeliverable(self.problem)
        if self.on_call is not None:
            self.on_call(op)
        try:
            # The bot-wide bucket is drawn on by the HTTP session (ratelimit.RateLimitTrace),
            # which also pauses it after a global 429.
            with fail_fast():
                return await fn()  # a 429 is raised as RateLimited, for the renderer
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


# --- through the interaction (a user install where the bot is not a member) -------------------------------

#: Follow-ups a user-installed app may create per interaction (the original response comes on top):
#: https://discord.com/developers/docs/change-log#userinstallable-apps-general-availability
#: ("User-installed apps are now limited to creating a maximum of 5 follow-ups").
MAX_FOLLOWUPS = 5


@dataclass
class _Slot:
    """One interaction message: the original response (``message_id`` None) or a follow-up."""

    message_id: int | None
    texts: list[str]
    actions: list[list[Action]]
    polls: list[Any] | None = None


@dataclass
class InteractionRef:
    slot: _Slot
    index: int  # which of the slot's parts this message is
    shown: str = ""


def compose(texts: list[str], limit: int = CONTENT_LIMIT) -> str:
    """Several parts in one message: whole when they fit, else each its header and the end of its text."""
    joined = "\n\n".join(texts)
    if len(joined) <= limit:
        return joined
    share = (limit - 2 * (len(texts) - 1)) // len(texts)
    out = []
    for t in texts:
        head, _, rest = t.partition("\n")
        head = head[: max(1, share // 3)]
        room = max(0, share - len(head) - 3)
        out.append(f"{head}\n…{rest[-room:] if room else ''}" if len(t) > share else t)
    return "\n\n".join(out)[:limit]


class InteractionSink(Sink):
    """Render one discussion through its interaction: the original response heads it (who
    asked what, and a consensus's stage line), each turn is one follow-up until the fifth,
    which then carries every remaining turn (each shown whole while they fit, else its label
    and the end of its text) and the summary. Nothing is posted in the channel itself. When the
    original response is not the discussion's own (a private menu the choice replaced), the head is
    a follow-up already sent (``head_message``) and ``max_followups`` counts the rest.

    The interaction's token lives 15 minutes: writes after that are refused by Discord and
    end the turn (:class:`core.sink.Undeliverable`); nothing is left to recover at a restart.
    """

    limit = MESSAGE_LIMIT
    min_interval = 1.0
    front_end = FRONT_END

    def __init__(self, interaction: discord.Interaction, budgets: ChannelBudgets, *, head: str,
                 max_followups: int = MAX_FOLLOWUPS, head_message: int | None = None) -> None:
        self.interaction = interaction
        self.budgets = budgets
        self.destination = f"interaction:{interaction.id}"
        self.head = head
        self.max_followups = max_followups
        self.progress = Progress()
        #: Where the head is: the original response, or the follow-up ``head_message`` (already sent).
        self.original = _Slot(head_message, [head], [])
        self.followups: list[_Slot] = []
        self.problem: str | None = None
        self._notice: tuple[Notice, int] | None = None
        self._votes: list[tuple[str, str]] = []  # (turn id, label) for the summary's vote menu
        self._adding = asyncio.Lock()  # two turns posting at once must not both take the last follow-up

    # One budget per interaction (its webhook), sized like a channel's.
    @property
    def post_budget(self) -> TokenBucket:  # type: ignore[override]
        return self.budgets.channel(self.interaction.id)

    @property
    def edit_budget(self) -> TokenBucket:  # type: ignore[override]
        return self.budgets.channel(self.interaction.id)

    @property
    def followups_used(self) -> int:
        return len(self.followups)

    async def post(self, frame: Frame) -> InteractionRef:
        return await self._add(message_content(frame), list(frame.actions))

    async def edit(self, ref: InteractionRef, frame: Frame) -> None:
        ref.slot.texts[ref.index] = ref.shown = message_content(frame)
        ref.slot.actions[ref.index] = list(frame.actions)
        await self._write(ref.slot)

    def shown(self, ref: InteractionRef) -> str:
        return ref.shown

    def shows(self, event: Notice) -> bool:
        if isinstance(event, DiscussionStarted):
            return self.progress.start(event)
        if isinstance(event, StageStarted):
            return self.progress.moves(event)
        return isinstance(event, DiscussionFinished)

    async def notice(self, event: Notice) -> None:
        steps: list[Callable[[], Awaitable[Any]]] = []
        if isinstance(event, DiscussionStarted):
            steps.append(functools.partial(self._head, self.progress.line()))
        elif isinstance(event, StageStarted):
            self.progress.advance(event)
            steps.append(functools.partial(self._head, self.progress.line()))
        elif isinstance(event, DiscussionFinished):
            if self.progress.stages:
                steps.append(functools.partial(self._head, self.progress.line(event.status)))
            parts, buttons, votes = summary_parts(event)
            # No poll here: poll votes reach only a bot that is in the server. A menu instead.
            text = "\n".join(parts)
            extra = [Action("vote", event.discussion_id)] if len(votes) >= 2 else []
            self._votes = [(v.choice, components.answer_label(t)) for v in votes for t in event.turns
                           if t.turn_id == v.choice]
            steps.append(functools.partial(self._add, text, [*extra, *buttons]))
        start = self._notice[1] if self._notice is not None and self._notice[0] is event else 0
        for i in range(start, len(steps)):
            if i > start:
                await self.post_budget.acquire(0.5)
            await steps[i]()
            self._notice = (event, i + 1)
        self._notice = None

    # --- helpers --------------------------------------------------------------------------------------
    async def _head(self, line: str) -> None:
        self.original.texts[0] = f"{self.head}\n{line}"[:CONTENT_LIMIT]
        await self._write(self.original)

    async def _add(self, text: str, actions: list[Action]) -> InteractionRef:
        async with self._adding:
            return await self._add_locked(text, actions)

    async def _add_locked(self, text: str, actions: list[Action]) -> InteractionRef:
        if len(self.followups) < self.max_followups:
            slot = _Slot(0, [text], [actions])
            msg = await self._call(lambda: self.interaction.followup.send(
                content=compose(slot.texts), wait=True, allowed_mentions=NO_MENTIONS, **self._rows(slot)))
            slot.message_id = msg.id
            self.followups.append(slot)
            return InteractionRef(slot, 0, text)
        slot = self.followups[-1]  # the last follow-up carries the rest
        slot.texts.append(text)
        slot.actions.append(actions)
        await self._write(slot)
        return InteractionRef(slot, len(slot.texts) - 1, text)

    def _rows(self, slot: _Slot) -> dict[str, Any]:
        per_part: list[list[dict[str, Any]]] = []
        for actions in slot.actions:
            rows: list[dict[str, Any]] = []
            for a in actions:
                if a.kind == "vote" and self._votes:
                    rows += components.menu(a, self._votes)
            per_part.append(rows + components.button_rows(a for a in actions if a.kind != "vote"))
        # At most 5 rows in a message: the latest part (the summary, once it is there) keeps its
        # rows, the earlier parts' buttons fill what is left in order.
        last = per_part[-1][: components.MAX_ROWS] if per_part else []
        earlier = [r for rows in per_part[:-1] for r in rows][: components.MAX_ROWS - len(last)]
        out = earlier + last
        return {"view": components.view(out)} if out else {}

    async def _write(self, slot: _Slot) -> None:
        content = compose(slot.texts)
        if slot.message_id is None:
            await self._call(lambda: self.interaction.edit_original_response(
                content=content, allowed_mentions=NO_MENTIONS, **self._rows(slot)))
        else:
            mid = slot.message_id
            await self._call(lambda: self.interaction.followup.edit_message(
                mid, content=content, allowed_mentions=NO_MENTIONS, **self._rows(slot)))

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        if self.problem is not None:
            raise Undeliverable(self.problem)
        try:
            # Interaction endpoints are outside Discord's global limit: no bot-wide call is taken.
            with fail_fast():
                return await fn()  # a 429 is raised as RateLimited, for the renderer
        except discord.HTTPException as e:
            if not 400 <= e.status < 500:
                raise
            log.warning("Discord refused an interaction write (%s %s)", e.status, e.code)
            self.problem = ("⚠️ Discord no longer accepts replies to this command (its 15 minutes may be over); "
                            "what is shown stays." if e.status in (401, 404) else
                            f"⚠️ Discord refused a reply ({e.status}, code {e.code}); I stopped here.")
            raise Undeliverable(self.problem) from None
