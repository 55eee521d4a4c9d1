"""Slack as a :class:`core.sink.Sink`: one discussion thread.

Two ways to write a reply, each with its own budget
(https://api.slack.com/apis/rate-limits; limits are per method per workspace):

- **native stream**: ``chat.startStream`` (Tier 2, ~20/min) creates the message,
  ``chat.appendStream`` (Tier 4, ~100/min) appends deltas, ``chat.stopStream``
  (Tier 2) ends it. Appends carry only the new text and Slack shows its own
  "writing" state, but a stream lives about five minutes and every stream costs
  one start and one stop from small buckets.
- **post and update**: ``chat.postMessage`` (~1/s per channel) then
  ``chat.update`` (Tier 3, ~50/min) with the whole text each time.

The choice is made per reply from the budgets: a new reply streams natively when
a ``startStream`` token is free right now and fewer streams are live than
``stopStream`` can end in a minute; otherwise it is posted and updated. Under a
light load every reply streams; under a heavy one the replies spread over both
budgets, so a workspace gets the sum of the two rates instead of either alone
(:mod:`bots.slack.budgets`).

A posted reply spends a third budget when ``chat.update`` is short: ``chat.postMessage``
is counted per channel (and a workspace-wide cap far above ``chat.update``'s), so its new
text can go out as the reply's next message in the thread, under the same label, instead
of waiting for an update (:meth:`SlackSink.budget`). The message before keeps what it
showed, which ends at a word boundary (a word still arriving is shown once it is whole),
never inside a code block. Its final text goes the same way when updates are queued, so
finals never wait a minute behind ``chat.update``'s window.

The sink only writes to Slack: which messages are open, what they show and
their budget claims are kept by the renderer's :class:`core.ledger.Ledger`. It
keeps its own count of live streams (each needs a ``stopStream``).

Around the answers (:mod:`bots.slack.blocks`):

- a finished answer carries its actions (``Frame.actions``): a stream gets them as
  ``blocks`` on ``chat.stopStream``, a posted message as its blocks (the text as a
  ``markdown`` block, then the actions);
- while a discussion runs, ``assistant.threads.setStatus`` shows a status with one
  rotating loading message per panelist, renewed at each stage and cleared at the end
  (:meth:`SlackSink.settle` clears it however the discussion ends). A status is
  decoration: it never waits long for budget and its failures are only logged;
- a consensus gets a task list of its stages (a ``plan`` block) edited in place as
  each stage starts and when it ends; the summary carries the summary's actions.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack import blocks
from bots.slack.budgets import WorkspaceBudgets
from bots.slack.errors import PERMANENT_ERRORS, retry_after, slack_error
from bots.slack.format import doc_to_mrkdwn, escape, header, to_mrkdwn
from core.actions import under_summary
from core.budget import TokenBucket
from core.events import DiscussionFinished, DiscussionStarted, StageStarted, TurnInfo
from core.present import line, strong, summary_doc
from core.sink import Frame, MessageClosed, Notice, RateLimited, Sink, Undeliverable
from core.textsplit import open_fence_at

log = logging.getLogger("parley.slack")

FRONT_END = "slack"
#: Keep messages well under Slack's 4,000-character guidance (header and notes included).
MESSAGE_LIMIT = 3_800
#: Slack ends a stream after about five minutes; roll over to a new message before that.
STREAM_LIFE = 270.0
#: startStream errors meaning this workspace cannot stream at all.
NO_STREAMS = ("missing_scope", "unknown_method", "not_allowed", "method_deprecated")
#: The status line while a discussion runs; Slack shows it after the app's name and rotates
#: the loading messages, at most 10 (https://docs.slack.dev/reference/methods/assistant.threads.setStatus).
STATUS = "is thinking…"
MAX_LOADING = 10
#: A posted reply's progress goes out as its next message only with at least this much new text.
MIN_PART = 100
#: With more posted replies than this still to finish in the workspace, a new one is posted with
#: its first text, not as an empty placeholder (filling one would need chat.update).
PLACEHOLDERS = 6
#: While streaming, a posted message shows text up to its last word boundary, holding back at most
#: this many characters of a word still arriving (a longer run is shown as it is).
HOLD_BACK = 40


@dataclass
class SlackRef:
    channel: str
    ts: str
    kind: Literal["stream", "message"]
    started: float = field(default_factory=time.monotonic)
    shown: str = ""  # what the message shows now (markdown for streams, mrkdwn for messages)
    live: bool = False  # a stream not yet stopped: holds one of the workspace's live-stream slots
    #: A posted reply continued in new messages: ``ts`` is the last one; the frame's text from
    #: ``base`` on is this message's, up to ``upto`` shown so far (both indices of ``Frame.text``).
    base: int = 0
    upto: int = 0
    parts: int = 1
    #: A posted reply's key in the workspace's post window while its final is still to be written.
    due: tuple[int, str, int] | None = None


class SlackSink(Sink):
    """Render one discussion into one Slack thread."""

    limit = MESSAGE_LIMIT
    min_interval = 0.8
    front_end = FRONT_END

    def __init__(
        self,
        client: AsyncWebClient,
        budgets: WorkspaceBudgets,
        channel: str,
        thread_ts: str,
        *,
        recipient_user_id: str | None = None,
        recipient_team_id: str | None = None,
        customize: bool = False,
        stream_life: float = STREAM_LIFE,
        on_call: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.budgets = budgets
        self.channel = channel
        self.thread_ts = thread_ts
        self.destination = f"{channel}:{thread_ts}"
        self.recipient_user_id = recipient_user_id
        self.recipient_team_id = recipient_team_id
        self.customize = customize
        self.stream_life = stream_life
        self.on_call = on_call
        #: The renderer posts notices (summary, stage titles) with this one; replies use ``reply_posts``.
        self.post_budget = budgets.notices(channel)
        self.reply_posts = budgets.post(channel)
        self.edit_budget = budgets["chat.update"]
        self._route: dict[tuple[str, int], str] = {}
        self._starting: set[tuple[str, int]] = set()  # replies counted in budgets.starting
        self._streams = 0  # this discussion's live streams, and those about to start
        #: How the next operation on a posted message goes ("update" or "post"), by (message, state).
        self._how: dict[tuple[int, str], str] = {}
        self._stops: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        #: What an operation that makes no call draws from (a reply whose posting waits for its text).
        self._no_call = TokenBucket(math.inf, 1, name="no call")
        # progress: the status line, and a consensus's task list
        self.status_on = False
        self._loading: list[str] = []
        self.stages: list[str] = []
        self.states: list[str] = []
        self.tasks_ts: str | None = None

    # --- routing: which budget the next operation on a message draws from ---------------------
    def budget(self, ref: SlackRef | None, frame: Frame) -> TokenBucket:
        key = (frame.turn.turn_id, frame.part)
        if ref is None:
            self._started(key)  # asked again (a retry): decide anew
            if frame.state == "streaming" and self.budgets.can_stream(self._streams):
                self._route[key] = "stream"
                self._starting.add(key)
                self.budgets.starting += 1
                self._streams += 1
                return self.budgets["chat.startStream"]
            self._owe(frame)
            busy = not self.edit_budget.available() or len(self.budgets.post_window.due) > PLACEHOLDERS
            if frame.state == "streaming" and ((not frame.raw and busy) or not self.reply_posts.workspace.available()):
                # Under load, no empty placeholder: the reply is posted with its first text (or with
                # its final, if the workspace's posts are short until then), so that an empty message
                # never waits for chat.update to be filled.
                self._route[key] = "later"
                return self._no_call
            self._route[key] = "message"
            return self.reply_posts
        if not ref.ts:
            self._how[(id(ref), frame.state)] = "create"
            return self.reply_posts
        if ref.kind == "message":
            how = self._message_route(ref, frame)
            self._how[(id(ref), frame.state)] = how
            return self.reply_posts if how == "post" else self.edit_budget
        if frame.state == "streaming" and time.monotonic() - ref.started > self.stream_life:
            return self.budgets["chat.stopStream"]  # retire the stream before Slack does
        if frame.state != "streaming" and not self._delta(ref, self._markdown(frame)):
            return self.budgets["chat.stopStream"]
        return self.budgets["chat.appendStream"]

    def final_budget(self, ref: SlackRef) -> TokenBucket:
        # A posted message's claim is on chat.update; the workspace's chat.postMessage window holds
        # slots for those claims as well (budgets.PostWindow): its final may go either way.
        return self.budgets["chat.appendStream"] if ref.kind == "stream" else self.edit_budget

    def _message_route(self, ref: SlackRef, frame: Frame) -> str:
        """"update" (chat.update the message) or "post" (its new text as the reply's next message)."""
        final = frame.state != "streaming"
        upto = self._cut(frame)
        if (
            ref.upto <= ref.base  # the message shows nothing yet: fill it
            or upto <= ref.upto
            or open_fence_at(frame.text, ref.upto) is not None  # never split inside code
        ):
            return "update"
        if final:
            # chat.update while its window has a slot for every final sent to it, else as a post:
            # the workspace's post window holds a slot for it (budgets.PostWindow).
            waiting = self.budgets.finals_on_update
            waiting.discard(id(ref))
            if self.edit_budget.available() or self._free(self.edit_budget) > len(waiting):
                waiting.add(id(ref))
                return "update"
            return "post"
        if self.edit_budget.available():
            return "update"
        enough = upto - ref.upto >= MIN_PART  # a paragraph's worth: no tiny messages
        if enough and self.reply_posts.ready():
            return "post"
        # Wait where the wait is shorter (chat.update's queue is the workspace's, a channel's posts
        # are its own); more text arrives meanwhile and goes with it. With little new text, a post
        # only if an update would wait long (a twelfth of the window: five of Slack's seconds).
        edit_wait = getattr(self.edit_budget, "expected_wait", None)
        if edit_wait is not None:
            wait = edit_wait()
            if self.reply_posts.expected_wait() < wait and (enough or wait > self.budgets.window / 12):
                return "post"
        return "update"

    def _started(self, key: tuple[str, int], live: bool = False) -> None:
        """A reply that chose to stream is no longer waiting for its start: it is ``live``, or not a stream."""
        if key in self._starting:
            self._starting.discard(key)
            self.budgets.starting -= 1
            if not live:
                self._streams -= 1

    def _owe(self, frame: Frame) -> None:
        """This reply is to be posted: a slot of the workspace's post window is held for its final."""
        self.budgets.post_window.due.add((id(self), frame.turn.turn_id, frame.part))

    def _paid(self, frame: Frame) -> None:
        """Its final is written (or it will never be): the slot is free for others."""
        self.budgets.post_window.due.discard((id(self), frame.turn.turn_id, frame.part))

    def _forget_due(self) -> None:
        """The discussion ended, however: nothing of it holds a slot any more."""
        due = self.budgets.post_window.due
        for key in [k for k in due if k[0] == id(self)]:
            due.discard(key)

    @staticmethod
    def _free(bucket: TokenBucket) -> int:
        free_now = getattr(bucket, "free_now", None)
        return int(free_now()) if free_now is not None else 0

    # --- what the ledger records ----------------------------------------------------------------
    def record(self, ref: SlackRef) -> dict[str, Any]:
        # The workspace too: installed in many, recovery needs its token to edit the message.
        out: dict[str, Any] = {"channel": ref.channel, "ts": ref.ts, "kind": ref.kind}
        if self.recipient_team_id:
            out["team"] = self.recipient_team_id
        return out

    def shown(self, ref: SlackRef) -> str:
        return ref.shown

    # --- text ------------------------------------------------------------------------------------
    def _markdown(self, frame: Frame) -> str:
        """A stream's whole text so far: grows only at the end, so it can be appended."""
        text = header(frame.turn, frame.part, markdown=True) + "\n\n" + escape(frame.text, markdown=True)
        if frame.state == "failed" and frame.notice:
            text += f"\n\n⚠️ {escape(frame.notice, markdown=True)}"
        return text

    def _mrkdwn(self, frame: Frame, base: int = 0) -> str:
        """A posted message's text: its label, then the frame's text from ``base`` (an earlier
        message of the reply shows what comes before), up to :meth:`_cut` while streaming."""
        body = frame.text[base : self._cut(frame)]
        text = header(frame.turn, frame.part, markdown=False) + "\n\n" + to_mrkdwn(body)
        if frame.state == "streaming":
            text += " …"
        elif frame.state == "failed" and frame.notice:
            text += f"\n\n:warning: {to_mrkdwn(frame.notice)}"
        return text

    @staticmethod
    def _cut(frame: Frame) -> int:
        """How much of ``frame.text`` a posted message shows: all of it once final; while streaming,
        up to the last word boundary (a word still arriving waits for its end, unless it is long)."""
        text = frame.text
        if frame.state != "streaming" or not text or text[-1].isspace():
            return len(text)
        i = max(text.rfind(" "), text.rfind("\n"))
        return i + 1 if i >= 0 and len(text) - i - 1 <= HOLD_BACK else len(text)

    @staticmethod
    def _delta(ref: SlackRef, new: str) -> str | None:
        """What to append to a stream to show ``new``; None if ``new`` does not extend it."""
        if new.startswith(ref.shown):
            return new[len(ref.shown) :]
        trimmed = ref.shown.rstrip()
        if new.startswith(trimmed):
            # A closing code fence replaces trailing newlines that are already shown.
            rest = new[len(trimmed) :]
            already = len(ref.shown) - len(trimmed)
            lead = len(rest) - len(rest.lstrip("\n"))
            return rest[min(already, lead) :]
        return None

    # --- Sink ------------------------------------------------------------------------------------
    async def post(self, frame: Frame) -> SlackRef:
        route = self._route.pop((frame.turn.turn_id, frame.part), "message")
        if route == "later":
            # posted by the first edit (see budget)
            return SlackRef(self.channel, "", "message", due=(id(self), frame.turn.turn_id, frame.part))
        ident = self._identity(frame.turn)
        if route == "stream":
            text = self._markdown(frame)
            try:
                resp = await self._call(
                    "chat.startStream",
                    self.client.chat_startStream,
                    channel=self.channel,
                    thread_ts=self.thread_ts,
                    markdown_text=text,
                    recipient_user_id=self.recipient_user_id,
                    recipient_team_id=self.recipient_team_id,
                    **ident,
                )
            except SlackApiError as e:
                if slack_error(e) in NO_STREAMS:
                    # This workspace cannot stream: post and update from now on.
                    log.warning("native streams unavailable (%s); using post and update", slack_error(e))
                    self.budgets.streams_enabled = False
                raise
            except BaseException:
                self._started((frame.turn.turn_id, frame.part))
                raise
            self._started((frame.turn.turn_id, frame.part), live=True)
            self.budgets.live_streams += 1
            return SlackRef(self.channel, str(resp["ts"]), "stream", shown=text, live=True)
        ref = SlackRef(self.channel, "", "message", due=(id(self), frame.turn.turn_id, frame.part))
        await self._continue(ref, frame)
        if frame.state != "streaming":
            self._paid(frame)
        return ref

    async def edit(self, ref: SlackRef, frame: Frame) -> None:
        if ref.kind == "message":
            how = self._how.pop((id(ref), frame.state), "update")
            self.budgets.finals_on_update.discard(id(ref))
            if how in ("post", "create") or not ref.ts:
                await self._continue(ref, frame)
            else:
                await self._update(ref, frame)
            if frame.state != "streaming":
                self._paid(frame)
            return
        final = frame.state != "streaming"
        if not final and time.monotonic() - ref.started > self.stream_life:
            await self._stop(ref)
            raise MessageClosed()
        new = self._markdown(frame)
        delta = self._delta(ref, new)
        if delta is None:
            # The text changed other than at the end (rare): end the stream and go on
            # with the same message as a posted one, replaced as a whole (the ledger
            # moves its claim to chat.update, see final_budget).
            await self._end_stream(ref)
            self._closed(ref)
            ref.kind = "message"
            await self._update(ref, frame)
            return
        if delta:
            try:
                await self._call(
                    "chat.appendStream",
                    self.client.chat_appendStream,
                    channel=ref.channel,
                    ts=ref.ts,
                    markdown_text=delta,
                )
            except SlackApiError as e:
                if slack_error(e) in ("message_not_in_streaming_state", "message_not_found"):
                    self._closed(ref)
                    raise MessageClosed() from None
                raise
            ref.shown = new
        if final:
            below = blocks.action_blocks(frame.actions) if frame.actions else None
            if delta:
                task = asyncio.create_task(self._stop_when_budget_allows(ref, below))
                self._stops.add(task)
                task.add_done_callback(self._stops.discard)
            else:
                await self._stop(ref, below)

    def shows(self, event: Notice) -> bool:
        """A consensus's start (its task list), stage titles and the summary. Any other start sets
        the thread's status only, which has its own budget: it goes in the background, without
        waiting for the channel's chat.postMessage budget (the parent message just spent it)."""
        if isinstance(event, DiscussionStarted) and not (event.stages and self.tasks_ts is None):
            self._loading = [f"{escape(p)} is writing…" for p in event.panel][:MAX_LOADING]
            task = asyncio.get_running_loop().create_task(self.set_status(STATUS))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return False
        return isinstance(event, (DiscussionStarted, StageStarted, DiscussionFinished))

    async def notice(self, event: Notice) -> None:
        if isinstance(event, DiscussionStarted):
            # The parent message (or the mention) already heads the thread.
            self._loading = [f"{escape(p)} is writing…" for p in event.panel][:MAX_LOADING]
            if event.stages and self.tasks_ts is None:
                self.stages = list(event.stages)
                self.states = ["pending"] * len(self.stages)
                text, plan = blocks.task_list(self.stages, self.states)
                resp = await self._call(
                    "chat.postMessage", self.client.chat_postMessage,
                    channel=self.channel, thread_ts=self.thread_ts, text=text, blocks=plan,
                )
                self.tasks_ts = str(resp["ts"])
            await self.set_status(STATUS)
            return
        if isinstance(event, StageStarted):
            await self._call(
                "chat.postMessage",
                self.client.chat_postMessage,
                channel=self.channel,
                thread_ts=self.thread_ts,
                text=doc_to_mrkdwn([line(strong(event.title))]),
            )
            if self.stages:
                await self._stage_started(event.title)
            await self.set_status(STATUS)  # the stage's first reply cleared it
            return
        try:
            mrkdwn = doc_to_mrkdwn(summary_doc(event))
            actions = under_summary(event)
            labels = {t.turn_id: t.label for t in event.turns}
            await self._call(
                "chat.postMessage",
                self.client.chat_postMessage,
                channel=self.channel,
                thread_ts=self.thread_ts,
                text=mrkdwn,
                **({"blocks": blocks.summary_blocks(mrkdwn, actions, labels)} if actions else {}),
            )
        finally:
            await self.settle(failed=event.status == "failed")

    async def settle(self, *, failed: bool = True) -> None:
        """The discussion ended, however it ended: clear the status and complete the task list
        (the stage that was running is marked failed unless the discussion finished). Never raises."""
        self._forget_due()
        for key in list(self._starting):
            self._started(key)
        if self.stages and ("pending" in self.states or "in_progress" in self.states):
            end = "error" if failed else "complete"
            self.states = [end if s == "in_progress" or (s == "pending" and not failed) else s
                           for s in self.states]
            await self._show_tasks()
        if self.status_on:
            await self.set_status("")

    async def set_status(self, status: str) -> None:
        """Set (or with ``""`` clear) the thread's status; a failure is logged, never raised. A status
        waits for its budget only to be cleared: a new one is skipped when the budget is spent."""
        bucket = self.budgets["assistant.threads.setStatus"]
        if status and not bucket.available():
            return
        try:
            async with asyncio.timeout(10.0):
                await bucket.acquire(0.0)
                await self._call(
                    "assistant.threads.setStatus",
                    self.client.assistant_threads_setStatus,
                    channel_id=self.channel,
                    thread_ts=self.thread_ts,
                    status=status,
                    loading_messages=self._loading if status and self._loading else None,
                )
            self.status_on = bool(status)
        except RateLimited as rl:
            bucket.pause(rl.retry_after)
            log.info("Slack: setStatus rate limited; status left as it was")
        except Exception as e:  # a status is decoration: the discussion goes on without it
            log.warning("Slack: setStatus failed (%s)", slack_error(e) if isinstance(e, SlackApiError) else e)

    async def _stage_started(self, title: str) -> None:
        try:
            i = self.stages.index(title)
        except ValueError:
            i = self.states.index("pending") if "pending" in self.states else len(self.states) - 1
        self.states = ["complete" if j < i else "in_progress" if j == i else s for j, s in enumerate(self.states)]
        await self._show_tasks()

    async def _show_tasks(self) -> None:
        """Edit the task list in place (chat.update budget); a failure is logged, never raised."""
        if self.tasks_ts is None:
            return
        text, plan = blocks.task_list(self.stages, self.states)
        try:
            async with asyncio.timeout(10.0):
                await self.edit_budget.acquire(0.5)
                await self._call(
                    "chat.update", self.client.chat_update, channel=self.channel, ts=self.tasks_ts, text=text,
                    blocks=plan,
                )
        except RateLimited as rl:
            self.edit_budget.pause(rl.retry_after)
            log.info("Slack: the task list update was rate limited; it catches up at the next stage")
        except Exception as e:
            log.warning("Slack: updating the task list failed (%s)",
                        slack_error(e) if isinstance(e, SlackApiError) else e)

    def abandon(self, ref: SlackRef) -> None:
        """The renderer gave up on this message (the channel refuses writes)."""
        self.budgets.finals_on_update.discard(id(ref))
        if ref.due is not None:
            self.budgets.post_window.due.discard(ref.due)
        self._closed(ref)

    async def aclose(self) -> None:
        """Wait for streams still being stopped (and a status still being set) in the background."""
        if self._stops or self._background:
            await asyncio.gather(*list(self._stops), *list(self._background), return_exceptions=True)
        self._forget_due()
        for key in list(self._starting):
            self._started(key)

    # --- helpers ------------------------------------------------------------------------------------
    def _identity(self, turn: TurnInfo) -> dict[str, Any]:
        # chat:write.customize lets each persona speak under its own name.
        if self.customize and turn.persona_name:
            return {"username": f"{turn.persona_name} · {turn.provider}/{turn.model}"[:80]}
        return {}

    async def _call(self, method: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        if self.on_call is not None:
            self.on_call(method)
        try:
            return await fn(**kwargs)
        except SlackApiError as e:
            if e.response is not None and e.response.status_code == 429:
                raise RateLimited(self.budgets.retry_after(retry_after(e))) from None
            if slack_error(e) in PERMANENT_ERRORS:
                raise Undeliverable(f"Slack refused {method}: {slack_error(e)}") from None
            raise

    async def _update(self, ref: SlackRef, frame: Frame) -> None:
        """Replace a posted message's text."""
        text = self._mrkdwn(frame, ref.base)
        try:
            await self._call(
                "chat.update", self.client.chat_update, channel=ref.channel, ts=ref.ts, text=text,
                **self._message_blocks(frame, ref.base),
            )
        except SlackApiError as e:
            if slack_error(e) in ("message_not_found", "cant_update_message"):
                self._paid(frame)  # the rest goes on as another message (another part)
                raise MessageClosed() from None  # deleted by someone: the rest continues in a new message
            raise
        ref.shown = text
        ref.upto = self._cut(frame)

    async def _continue(self, ref: SlackRef, frame: Frame) -> None:
        """Post the reply's message (``ref.ts`` empty) or its next one in the thread, under the same
        label: the message before keeps what it shows (up to ``ref.upto``), this one shows the rest."""
        base = ref.upto
        if ref.ts and frame.state == "streaming" and self._cut(frame) <= base:
            return  # nothing new to show yet beyond a word still arriving: the next one will
        text = self._mrkdwn(frame, base)
        resp = await self._call(
            "chat.postMessage",
            self.client.chat_postMessage,
            channel=self.channel,
            thread_ts=self.thread_ts,
            text=text,
            unfurl_links=False,
            unfurl_media=False,
            **self._message_blocks(frame, base),
            **self._identity(frame.turn),
        )
        if ref.ts:
            ref.parts += 1
        ref.ts, ref.base, ref.upto, ref.shown = str(resp["ts"]), base, self._cut(frame), text

    def _message_blocks(self, frame: Frame, base: int = 0) -> dict[str, Any]:
        """A final posted answer's blocks (its text, then its actions); none before."""
        if not frame.actions or frame.state == "streaming":
            return {}
        part = Frame(frame.turn, frame.text[base:], frame.raw, frame.part, frame.state, frame.notice, frame.actions)
        return {"blocks": blocks.answer_blocks(self._markdown(part), frame.actions)}

    async def _end_stream(self, ref: SlackRef, below: list[dict[str, Any]] | None = None) -> None:
        try:
            await self._call(
                "chat.stopStream", self.client.chat_stopStream, channel=ref.channel, ts=ref.ts, blocks=below
            )
        except SlackApiError as e:
            if slack_error(e) != "message_not_in_streaming_state":
                raise

    async def _stop(self, ref: SlackRef, below: list[dict[str, Any]] | None = None) -> None:
        """End a stream and the message with it (``below``: blocks shown under its text)."""
        await self._end_stream(ref, below)
        self._closed(ref)

    async def _stop_when_budget_allows(self, ref: SlackRef, below: list[dict[str, Any]] | None = None) -> None:
        bucket = self.budgets["chat.stopStream"]
        for attempt in range(6):
            await bucket.acquire(0.0)
            try:
                await self._stop(ref, below)
                return
            except RateLimited as rl:
                bucket.pause(rl.retry_after)
            except Exception:
                log.exception("stopping a stream failed (attempt %d)", attempt + 1)
                await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
        self._closed(ref)  # Slack ends it within minutes anyway; do not hold a stream slot

    def _closed(self, ref: SlackRef) -> None:
        """The stream ended (or will never be written again): free its live-stream slot."""
        if ref.live:
            ref.live = False
            self.budgets.live_streams -= 1
            self._streams -= 1
