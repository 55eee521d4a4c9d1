"""Slack as a :class:`core.render.Sink`: one discussion thread.

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
budgets, so a workspace gets the sum of the two rates instead of either alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.format import to_mrkdwn
from core.events import DiscussionFinished, DiscussionStarted, Event, StageStarted, TurnInfo
from core.render import (
    Frame,
    MessageClosed,
    RateLimited,
    TokenBucket,
    Undeliverable,
    WindowBudget,
    summary_markdown,
)
from core.store import Store

log = logging.getLogger("parley.slack")

#: Calls per minute per workspace, from Slack's published tiers.
TIER_LIMITS: dict[str, int] = {
    "chat.update": 50,  # Tier 3
    "chat.startStream": 20,  # Tier 2
    "chat.appendStream": 100,  # Tier 4
    "chat.stopStream": 20,  # Tier 2
}
#: chat.postMessage: about one per second per channel, short bursts allowed.
POST_PER_CHANNEL_PER_SECOND = 1.0
#: Keep messages well under Slack's 4,000-character guidance (header and notes included).
MESSAGE_LIMIT = 3_800
#: Slack ends a stream after about five minutes; roll over to a new message before that.
STREAM_LIFE = 270.0
INTERRUPTED = "⚠️ Interrupted: Parley restarted while this reply was being written. Ask again to rerun it."


def tier_bucket(per_minute: int, name: str, window: float = 60.0) -> WindowBudget:
    """Slack's "N per minute" as a sliding window, kept one call below the limit so
    that network jitter between our clock and Slack's cannot push a burst over it."""
    # Stream starts and stops are not progress updates: they may use the whole burst.
    paced = name in ("chat.update", "chat.appendStream")
    return WindowBudget(per_minute - 1, window, paced=paced, name=name)


@dataclass
class WorkspaceBudgets:
    """Every reply in a workspace draws from these, whatever discussion it belongs to."""

    limits: dict[str, int] = field(default_factory=lambda: dict(TIER_LIMITS))
    window: float = 60.0  # seconds the per-minute limits are counted over (benchmarks compress time)
    post_rate: float = POST_PER_CHANNEL_PER_SECOND
    buckets: dict[str, WindowBudget] = field(default_factory=dict)
    channels: dict[str, TokenBucket] = field(default_factory=dict)
    live_streams: int = 0
    streams_enabled: bool = True

    def __post_init__(self) -> None:
        for method, n in self.limits.items():
            self.buckets[method] = tier_bucket(n, method, self.window)

    def __getitem__(self, method: str) -> WindowBudget:
        return self.buckets[method]

    def post(self, channel: str) -> TokenBucket:
        bucket = self.channels.get(channel)
        if bucket is None:
            bucket = self.channels[channel] = TokenBucket(self.post_rate * 0.95, 1, name=f"post:{channel}")
        return bucket

    def can_stream(self) -> bool:
        """A new reply may stream natively: a start token is free now and the stops keep up."""
        return (
            self.streams_enabled
            and self.buckets["chat.startStream"].available()
            and self.live_streams < self.limits["chat.stopStream"]
        )


@dataclass
class SlackRef:
    channel: str
    ts: str
    kind: Literal["stream", "message"]
    post_id: int | None = None
    started: float = field(default_factory=time.monotonic)
    shown: str = ""  # what the message shows now (markdown for streams, mrkdwn for messages)
    open: bool = True
    claim: WindowBudget | None = None  # the budget this message's final operation is reserved in

    def dumps(self) -> str:
        return json.dumps({"channel": self.channel, "ts": self.ts, "kind": self.kind})


def retry_after(e: SlackApiError) -> float:
    headers = getattr(e.response, "headers", {}) or {}
    for k, v in headers.items():
        if k.lower() == "retry-after":
            v = v[0] if isinstance(v, list) else v
            try:
                return max(0.0, float(v))
            except (TypeError, ValueError):
                break
    return 1.0


# Errors no retry will fix: the renderer stops writing the turn (what is shown stays).
PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "thread_not_found",
        "account_inactive",
        "token_revoked",
        "invalid_auth",
        "not_authed",
        "no_permission",
        "restricted_action",
        "team_access_not_granted",
        "ekm_access_denied",
    }
)


def slack_error(e: SlackApiError) -> str:
    data = getattr(e.response, "data", None)
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def header(turn: TurnInfo, part: int, *, markdown: bool) -> str:
    who = f"{turn.emoji + ' ' if turn.emoji else ''}{turn.persona_name}" if turn.persona_name else ""
    where = f"`{turn.provider}/{turn.model}`"
    cont = f" (part {part})" if part > 1 else ""
    if not who:
        return f"{where}{cont}"
    star = "**" if markdown else "*"
    return f"{star}{who}{star} · {where}{cont}"


class SlackSink:
    """Render one discussion into one Slack thread."""

    limit = MESSAGE_LIMIT
    min_interval = 0.8

    def __init__(
        self,
        client: AsyncWebClient,
        budgets: WorkspaceBudgets,
        channel: str,
        thread_ts: str,
        *,
        store: Store | None = None,
        discussion_id: str | None = None,
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
        self.store = store
        self.discussion_id = discussion_id
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

    # --- text ------------------------------------------------------------------------------------
    def _markdown(self, frame: Frame) -> str:
        """A stream's whole text so far: grows only at the end, so it can be appended."""
        text = header(frame.turn, frame.part, markdown=True) + "\n\n" + frame.text
        if frame.state == "failed" and frame.notice:
            text += f"\n\n⚠️ {frame.notice}"
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

    # --- Sink protocol ----------------------------------------------------------------------------
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
                if slack_error(e) in ("missing_scope", "unknown_method", "not_allowed", "method_deprecated"):
                    # This workspace cannot stream: post and update from now on.
                    log.warning("native streams unavailable (%s); using post and update", slack_error(e))
                    self.budgets.streams_enabled = False
                raise
            self.budgets.live_streams += 1
            ref = SlackRef(self.channel, str(resp["ts"]), "stream", shown=text)
            ref.claim = self.budgets["chat.appendStream"]
        else:
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
            ref = SlackRef(self.channel, str(resp["ts"]), "message", shown=text)
            ref.claim = self.edit_budget
        if frame.state == "streaming":
            ref.claim.claim(1)
        else:
            ref.claim = None
        if self.store is not None and self.discussion_id is not None:
            ref.post_id = self.store.record_post(
                self.discussion_id,
                frame.turn.turn_id,
                "slack",
                f"{self.channel}:{self.thread_ts}",
                ref.dumps(),
            )
        self._saved(ref, frame)
        return ref

    async def edit(self, ref: SlackRef, frame: Frame) -> None:
        if frame.state != "streaming":
            self._release(ref)
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
            # with the same message as a posted one, replaced as a whole.
            await self._end_stream(ref)
            self.budgets.live_streams -= 1
            ref.kind = "message"
            if ref.claim is not None:
                self._release(ref)
                if not final:
                    ref.claim = self.edit_budget
                    ref.claim.claim(1)
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
        self._saved(ref, frame)

    @staticmethod
    def shows(event: Event) -> bool:
        """Stage titles and the summary get a message; the parent already heads the thread."""
        return isinstance(event, (StageStarted, DiscussionFinished))

    async def notice(self, event: Event) -> None:
        if isinstance(event, DiscussionStarted):
            return  # the parent message (or the mention) already heads the thread
        if isinstance(event, StageStarted):
            text = f"*{event.title}*"
        elif isinstance(event, DiscussionFinished):
            text = summary_markdown(event)
        else:
            return
        await self._call(
            "chat.postMessage",
            self.client.chat_postMessage,
            channel=self.channel,
            thread_ts=self.thread_ts,
            text=text,
        )

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
            await self._call("chat.update", self.client.chat_update, channel=ref.channel, ts=ref.ts, text=text)
        except SlackApiError as e:
            if slack_error(e) in ("message_not_found", "cant_update_message"):
                # Deleted by someone: the rest of the reply continues in a new message.
                self._closed(ref)
                raise MessageClosed() from None
            raise
        ref.shown = text
        self._saved(ref, frame)

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

    @staticmethod
    def _release(ref: SlackRef) -> None:
        if ref.claim is not None:
            ref.claim.claim(-1)
            ref.claim = None

    def abandon(self, ref: SlackRef) -> None:
        """The renderer gave up on this message (the channel refuses writes)."""
        self._closed(ref)

    def _closed(self, ref: SlackRef) -> None:
        self._release(ref)
        if ref.kind == "stream" and ref.open:
            self.budgets.live_streams -= 1
        ref.open = False
        if self.store is not None and ref.post_id is not None:
            self.store.close_posts([ref.post_id])

    def _saved(self, ref: SlackRef, frame: Frame) -> None:
        if self.store is None or ref.post_id is None:
            return
        if frame.state == "streaming":
            self.store.update_post_text(ref.post_id, ref.shown)
        else:
            with contextlib.suppress(Exception):
                self.store.close_posts([ref.post_id])
