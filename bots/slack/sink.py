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

The sink only writes to Slack: which messages are open, what they show and
their budget claims are kept by the renderer's :class:`core.ledger.Ledger`. It
keeps its own count of live streams (each needs a ``stopStream``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.budgets import WorkspaceBudgets
from bots.slack.errors import PERMANENT_ERRORS, retry_after, slack_error
from bots.slack.format import doc_to_mrkdwn, escape, header, to_mrkdwn
from core.budget import TokenBucket
from core.events import DiscussionFinished, StageStarted, TurnInfo
from core.present import line, strong, summary_doc
from core.sink import Frame, MessageClosed, Notice, RateLimited, Sink, Undeliverable

log = logging.getLogger("parley.slack")

FRONT_END = "slack"
#: Keep messages well under Slack's 4,000-character guidance (header and notes included).
MESSAGE_LIMIT = 3_800
#: Slack ends a stream after about five minutes; roll over to a new message before that.
STREAM_LIFE = 270.0
#: startStream errors meaning this workspace cannot stream at all.
NO_STREAMS = ("missing_scope", "unknown_method", "not_allowed", "method_deprecated")


@dataclass
class SlackRef:
    channel: str
    ts: str
    kind: Literal["stream", "message"]
    started: float = field(default_factory=time.monotonic)
    shown: str = ""  # what the message shows now (markdown for streams, mrkdwn for messages)
    live: bool = False  # a stream not yet stopped: holds one of the workspace's live-stream slots


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
        self.post_budget = budgets.post(channel)
        self.edit_budget = budgets["chat.update"]
        self._route: dict[tuple[str, int], str] = {}
        self._stops: set[asyncio.Task[None]] = set()

    # --- routing: which budget the next operation on a message draws from ---------------------
    def budget(self, ref: SlackRef | None, frame: Frame) -> TokenBucket:
        key = (frame.turn.turn_id, frame.part)
        if ref is None:
            if frame.state == "streaming" and self.budgets.can_stream():
                self._route[key] = "stream"
                return self.budgets["chat.startStream"]
            self._route[key] = "message"
            return self.post_budget
        if ref.kind == "message":
            return self.edit_budget
        if frame.state == "streaming" and time.monotonic() - ref.started > self.stream_life:
            return self.budgets["chat.stopStream"]  # retire the stream before Slack does
        if frame.state != "streaming" and not self._delta(ref, self._markdown(frame)):
            return self.budgets["chat.stopStream"]
        return self.budgets["chat.appendStream"]

    def final_budget(self, ref: SlackRef) -> TokenBucket:
        return self.budgets["chat.appendStream"] if ref.kind == "stream" else self.edit_budget

    # --- what the ledger records ----------------------------------------------------------------
    def record(self, ref: SlackRef) -> dict[str, Any]:
        return {"channel": ref.channel, "ts": ref.ts, "kind": ref.kind}

    def shown(self, ref: SlackRef) -> str:
        return ref.shown

    # --- text ------------------------------------------------------------------------------------
    def _markdown(self, frame: Frame) -> str:
        """A stream's whole text so far: grows only at the end, so it can be appended."""
        text = header(frame.turn, frame.part, markdown=True) + "\n\n" + escape(frame.text, markdown=True)
        if frame.state == "failed" and frame.notice:
            text += f"\n\n⚠️ {escape(frame.notice, markdown=True)}"
        return text

    def _mrkdwn(self, frame: Frame) -> str:
        text = header(frame.turn, frame.part, markdown=False) + "\n\n" + to_mrkdwn(frame.text)
        if frame.state == "streaming":
            text += " …"
        elif frame.state == "failed" and frame.notice:
            text += f"\n\n:warning: {to_mrkdwn(frame.notice)}"
        return text

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
            self.budgets.live_streams += 1
            return SlackRef(self.channel, str(resp["ts"]), "stream", shown=text, live=True)
        text = self._mrkdwn(frame)
        resp = await self._call(
            "chat.postMessage",
            self.client.chat_postMessage,
            channel=self.channel,
            thread_ts=self.thread_ts,
            text=text,
            unfurl_links=False,
            unfurl_media=False,
            **ident,
        )
        return SlackRef(self.channel, str(resp["ts"]), "message", shown=text)

    async def edit(self, ref: SlackRef, frame: Frame) -> None:
        if ref.kind == "message":
            await self._update(ref, frame)
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
            if delta:
                task = asyncio.create_task(self._stop_when_budget_allows(ref))
                self._stops.add(task)
                task.add_done_callback(self._stops.discard)
            else:
                await self._stop(ref)

    def shows(self, event: Notice) -> bool:
        """Stage titles and the summary get a message; the parent already heads the thread."""
        return isinstance(event, (StageStarted, DiscussionFinished))

    async def notice(self, event: Notice) -> None:
        if isinstance(event, StageStarted):
            text = doc_to_mrkdwn([line(strong(event.title))])
        elif isinstance(event, DiscussionFinished):
            text = doc_to_mrkdwn(summary_doc(event))
        else:
            return  # the parent message (or the mention) already heads the thread
        await self._call(
            "chat.postMessage",
            self.client.chat_postMessage,
            channel=self.channel,
            thread_ts=self.thread_ts,
            text=text,
        )

    def abandon(self, ref: SlackRef) -> None:
        """The renderer gave up on this message (the channel refuses writes)."""
        self._closed(ref)

    async def aclose(self) -> None:
        """Wait for streams still being stopped in the background."""
        if self._stops:
            await asyncio.gather(*list(self._stops), return_exceptions=True)

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
                raise RateLimited(retry_after(e)) from None
            if slack_error(e) in PERMANENT_ERRORS:
                raise Undeliverable(f"Slack refused {method}: {slack_error(e)}") from None
            raise

    async def _update(self, ref: SlackRef, frame: Frame) -> None:
        """Replace a posted message's text."""
        text = self._mrkdwn(frame)
        try:
            await self._call(
                "chat.update", self.client.chat_update, channel=ref.channel, ts=ref.ts, text=text
            )
        except SlackApiError as e:
            if slack_error(e) in ("message_not_found", "cant_update_message"):
                raise MessageClosed() from None  # deleted by someone: the rest continues in a new message
            raise
        ref.shown = text

    async def _end_stream(self, ref: SlackRef) -> None:
        try:
            await self._call("chat.stopStream", self.client.chat_stopStream, channel=ref.channel, ts=ref.ts)
        except SlackApiError as e:
            if slack_error(e) != "message_not_in_streaming_state":
                raise

    async def _stop(self, ref: SlackRef) -> None:
        """End a stream and the message with it."""
        await self._end_stream(ref)
        self._closed(ref)

    async def _stop_when_budget_allows(self, ref: SlackRef) -> None:
        bucket = self.budgets["chat.stopStream"]
        for attempt in range(6):
            await bucket.acquire(0.0)
            try:
                await self._stop(ref)
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
