"""Stream rendering shared by every front-end.

The :class:`Renderer` turns the engine's events into calls on a
:class:`core.sink.Sink` (post a message, edit it). It

- coalesces deltas: a message is re-sent with its latest text when a token
  of budget is granted, never once per delta;
- keeps every message under ``sink.limit`` by rolling over into continuation
  messages at safe boundaries (:mod:`core.textsplit`);
- spends per-destination budgets (:mod:`core.budget`) shared by all concurrent
  turns writing to the same place, with final edits first and the stalest
  message next;
- honours a platform 429 (:class:`RateLimited`) by pausing the bucket and
  re-sending the same text later: nothing is dropped;
- ends a failed turn's message with what was shown plus the reason;
- stops writing a turn the platform will never accept again
  (:class:`Undeliverable`) or that kept failing for ``give_up_after`` seconds;
- keeps the :class:`core.ledger.Ledger` of open messages (store rows and budget
  claims) outside the platform-retry path: bookkeeping never posts twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.actions import Action, under_answer
from core.budget import TokenBucket, rank
from core.events import (
    DiscussionFinished,
    DiscussionStarted,
    Event,
    StageStarted,
    TextDelta,
    TurnFailed,
    TurnFinished,
    TurnInfo,
    TurnStarted,
)
from core.ledger import Entry, Ledger
from core.sink import Frame, MessageClosed, Notice, RateLimited, Sink, State, Undeliverable
from core.textsplit import open_fence_at, split_point

if TYPE_CHECKING:
    from core.ops import Metrics

log = logging.getLogger("parley.render")


@dataclass(slots=True)
class _Msg:
    start: int
    end: int | None = None  # None: the live (last) message of the turn
    ref: Any = None
    sent: str | None = None  # display text last sent
    sent_state: State | None = None
    sent_raw: int = 0  # characters of the answer this message showed when last sent
    fence_in: str | None = None  # fence info string reopened at the top of this message
    closed: bool = False  # the platform no longer accepts edits to this message
    entry: Entry | None = None  # the ledger's record of this message while it is open


@dataclass(slots=True)
class _View:
    turn: TurnInfo
    parts: list[str] = field(default_factory=list)
    length: int = 0
    msgs: list[_Msg] = field(default_factory=lambda: [_Msg(0)])
    final: State | None = None
    notice: str | None = None
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when the turn's final text is known: a progress update still waiting for budget gives way.
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    last_flush: float = 0.0
    task: asyncio.Task[None] | None = None
    visible_at: list[tuple[int, float]] = field(default_factory=list)
    failing_since: float | None = None  # first failure of the current run of failed ops
    dead: str | None = None  # why nothing more can be written for this turn
    #: Set once the turn's first message is on the platform (or never will be): a stage
    #: title waits for the earlier turns' messages so the thread reads in order.
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    #: What can be done under the answer once it is final (core.actions).
    actions: tuple[Action, ...] = ()
    started: float = field(default_factory=time.monotonic)
    seen: bool = False  # some of its text is on the platform

    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""


class Renderer:
    """Render one discussion's events onto one sink.

    ``ledger`` records the open messages (without one, nothing is stored and
    claims are still kept). ``on_visible(turn_id, n_chars, t)`` (optional) is
    called whenever the first ``n_chars`` of a turn became visible on the
    platform: benchmarks use it to measure freshness. When the rendering task is
    cancelled, unfinished turns say they were interrupted for at most ``grace``
    seconds; the messages still open after that stay in the ledger for recovery.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        ledger: Ledger | None = None,
        on_visible: Callable[[str, int, float], None] | None = None,
        metrics: Metrics | None = None,
        max_op_retries: int = 5,
        give_up_after: float = 300.0,
        grace: float = 3.0,
    ) -> None:
        self.sink = sink
        self.grace = grace
        self.ledger = ledger or Ledger(None, None, sink)
        self.views: dict[str, _View] = {}
        self.on_visible = on_visible
        self.metrics = metrics
        self.front_end = getattr(sink, "front_end", "") or type(sink).__name__
        self.max_op_retries = max_op_retries
        self.give_up_after = give_up_after
        self.mode = ""
        #: What unfinished answers say when the rendering is cancelled (set by a /stop).
        self.stop_notice = "Interrupted: Parley stopped before the answer was complete."
        self.ops = 0
        self.rate_limited = 0
        self.lost_ops = 0

    async def consume(self, events: AsyncIterator[Event]) -> DiscussionFinished | None:
        """Render a whole event stream; returns the final event (or None if cut short)."""
        last: DiscussionFinished | None = None
        try:
            async for ev in events:
                if type(ev) is TextDelta:
                    self.append(ev.turn_id, ev.text)
                elif isinstance(ev, TurnStarted):
                    self.start(ev.turn)
                elif isinstance(ev, TurnFinished):
                    self.finish(ev.turn.turn_id, ev.text, under_answer(ev, self.mode))
                elif isinstance(ev, TurnFailed):
                    self.fail(ev.turn.turn_id, ev.text, ev.error.message or "failed", under_answer(ev, self.mode))
                elif isinstance(ev, StageStarted):
                    await self._opened()
                    await self._notice(ev)
                elif isinstance(ev, DiscussionStarted):
                    self.mode = ev.mode
                    await self._notice(ev)
                elif isinstance(ev, DiscussionFinished):
                    last = ev
        except asyncio.CancelledError:
            # Stopped (shutdown, or the person cancelled): say so where it is cheap, but
            # never hold the shutdown for budget. What stays open, restart recovery marks.
            await self.stop()
            raise
        except BaseException:
            await self.drain()
            raise
        await self.drain()
        if last is not None:
            await self._notice(last)
        return last

    # --- event handlers (sync: cheap on the hot path) ---------------------------------------
    def start(self, turn: TurnInfo) -> None:
        view = _View(turn)
        self.views[turn.turn_id] = view
        view.task = asyncio.create_task(self._flusher(view))
        view.dirty.set()  # post the placeholder now: the reader sees who is answering

    def append(self, turn_id: str, text: str) -> None:
        view = self.views.get(turn_id)
        if view is None:
            return
        view.parts.append(text)
        view.length += len(text)
        view.dirty.set()

    def finish(self, turn_id: str, text: str, actions: Sequence[Action] = ()) -> None:
        view = self.views[turn_id]
        view.actions = tuple(actions)
        view.parts[:] = [text]
        view.length = len(text)
        view.final = "done"
        view.dirty.set()
        view.ended.set()

    def fail(self, turn_id: str, text: str, notice: str, actions: Sequence[Action] = ()) -> None:
        view = self.views[turn_id]
        view.actions = tuple(actions)
        shown = view.text()
        # Keep whatever was shown; prefer the engine's copy if it has more.
        view.parts[:] = [text if len(text) >= len(shown) else shown]
        view.length = len(view.parts[0])
        view.final = "failed"
        view.notice = notice
        view.dirty.set()
        view.ended.set()

    async def drain(self) -> None:
        """Wait until every turn's last frame is on the platform."""
        for view in list(self.views.values()):
            if view.final is None:  # the stream was cut off without a result
                self.fail(view.turn.turn_id, "", "Interrupted before the answer was complete.")
        tasks = [v.task for v in self.views.values() if v.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self, grace: float | None = None) -> None:
        """Like :meth:`drain`, but give up after ``grace`` seconds (``self.grace``)."""
        for view in list(self.views.values()):
            if view.final is None:
                self.fail(view.turn.turn_id, "", self.stop_notice)
        tasks = [v.task for v in self.views.values() if v.task is not None and not v.task.done()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.grace if grace is None else grace)
            if late:
                await self.abort()

    async def abort(self) -> None:
        for v in self.views.values():
            if v.task:
                v.task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*(v.task for v in self.views.values() if v.task), return_exceptions=True)

    # --- flushing -------------------------------------------------------------------------------
    async def _notice(self, ev: Notice) -> None:
        if not self.sink.shows(ev):
            return  # nothing to post: spend no budget on it
        await self.sink.post_budget.acquire(0.5)
        for attempt in range(self.max_op_retries):
            try:
                await self.sink.notice(ev)
                self.ops += 1
                return
            except RateLimited as rl:
                self._limited()
                self.sink.post_budget.pause(rl.retry_after)
                await self.sink.post_budget.acquire(0.5)
            except Undeliverable as e:
                log.warning("could not post a %s notice: %s", ev.type, e)
                break
            except Exception:
                log.exception("posting a %s notice failed (attempt %d)", ev.type, attempt + 1)
                await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
        self.lost_ops += 1

    async def _opened(self) -> None:
        """Wait until every turn so far has its first message posted (or was given up)."""
        waits = [v.opened.wait() for v in self.views.values() if not v.opened.is_set()]
        if waits:
            await asyncio.gather(*waits)

    def _limited(self) -> None:
        self.rate_limited += 1
        if self.metrics is not None:
            self.metrics.rate_limited.labels(self.front_end).inc()

    async def _flusher(self, view: _View) -> None:
        if self.metrics is not None:
            self.metrics.open_streams.labels(self.front_end).inc()
        try:
            while True:
                await view.dirty.wait()
                if view.final is None and view.seen:  # the first text goes out at once
                    wait = view.last_flush + self.sink.min_interval - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                view.dirty.clear()
                await self._sync(view)
                view.last_flush = time.monotonic()
                if view.dead is not None or (view.final is not None and not view.dirty.is_set()):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rendering turn %s failed", view.turn.turn_id)
        finally:
            view.opened.set()
            if self.metrics is not None:
                self.metrics.open_streams.labels(self.front_end).dec()

    def _frames(self, view: _View) -> None:
        """Roll the live message over while its text exceeds the limit."""
        text = view.text()
        while True:
            live = view.msgs[-1]
            # Leave room for a reopened fence at the top and a closing one at the bottom.
            room = self.sink.limit - 4 - (len(live.fence_in) + 4 if live.fence_in is not None else 0)
            body = text[live.start :]
            if len(body) <= room:
                return
            cut = live.start + split_point(body, room)
            live.end = cut
            view.msgs.append(_Msg(cut, fence_in=open_fence_at(text, cut)))

    def _display(self, view: _View, msg: _Msg, idx: int) -> Frame:
        text = view.text()
        raw = text[msg.start : msg.end] if msg.end is not None else text[msg.start :]
        display = raw
        if msg.fence_in is not None:
            display = f"```{msg.fence_in}\n" + display
        last = idx == len(view.msgs) - 1
        if msg.end is not None and open_fence_at(text, msg.end) is not None:
            display = display.rstrip("\n") + "\n```"
        state: State
        if not last:
            state = "continued"
        elif view.final is None:
            state = "streaming"
        else:
            state = view.final
        final = last and view.final is not None
        return Frame(view.turn, display, raw, idx + 1, state, view.notice if last else None,
                     view.actions if final else ())

    async def _sync(self, view: _View) -> None:
        self._frames(view)
        final = view.final is not None
        for idx, msg in enumerate(view.msgs):
            if view.dead is not None:
                return
            if msg.closed:
                continue
            frame = self._display(view, msg, idx)
            if msg.sent == frame.text and msg.sent_state == frame.state:
                continue
            ok = await self._op(view, msg, frame, final or frame.state == "continued")
            if not ok:
                return

    async def _op(self, view: _View, msg: _Msg, frame: Frame, urgent: bool) -> bool:
        creating = msg.ref is None
        priority = rank(urgent, view.last_flush)
        for attempt in range(self.max_op_retries):
            bucket = self.sink.budget(msg.ref, frame)
            if priority >= 1 and view.final is None and not creating:
                if not await self._progress_grant(view, bucket, priority):
                    # The turn ended while this progress update waited for budget: ask again for
                    # the final, at a final's priority (the sink may choose another budget for it).
                    frame = self._display(view, msg, view.msgs.index(msg))
                    priority = rank(True, view.last_flush)
                    continue
            else:
                await bucket.acquire(priority)
            frame = self._latest(view, msg, frame, bucket)
            if frame.state != "streaming":
                self.ledger.settling(msg.entry)
            try:
                if creating:
                    ref = await self.sink.post(frame)
                else:
                    await self.sink.edit(msg.ref, frame)
            except MessageClosed:
                self._reopen(view, msg)
                return False
            except Undeliverable as e:
                self._give_up(view, str(e) or type(e).__name__)
                return False
            except RateLimited as rl:
                self._limited()
                bucket.pause(rl.retry_after)
            except Exception:
                log.exception("sink %s failed (attempt %d)", "post" if creating else "edit", attempt + 1)
                now = time.monotonic()
                if view.failing_since is None:
                    view.failing_since = now
                elif now - view.failing_since > self.give_up_after:
                    self._give_up(view, f"the platform kept failing for {self.give_up_after:.0f}s")
                    return False
                await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
            else:
                # Delivered. Bookkeeping comes after, outside the retry path: a failure
                # to record the message must never make us post it again.
                if creating:
                    msg.ref = ref
                    msg.entry = self.ledger.opened(view.turn.turn_id, ref, frame)
                    view.opened.set()
                elif msg.entry is not None:
                    self.ledger.wrote(msg.entry, msg.ref, frame)
                self.ops += 1
                msg.sent, msg.sent_state, msg.sent_raw = frame.text, frame.state, len(frame.raw)
                view.failing_since = None
                if frame.raw and not view.seen:
                    view.seen = True
                    if self.metrics is not None:
                        self.metrics.freshness.labels(self.front_end).observe(time.monotonic() - view.started)
                if self.on_visible and frame.raw:
                    self.on_visible(view.turn.turn_id, msg.start + len(frame.raw), time.monotonic())
                return True
        view.dirty.set()  # try again on the next flush rather than drop the text
        return False

    @staticmethod
    async def _progress_grant(view: _View, bucket: TokenBucket, priority: float) -> bool:
        """Wait for a progress update's budget; False (nothing taken) if the turn ends first, so that
        its final is not held behind progress in a budget that is short."""
        if bucket.try_acquire(priority):
            return True
        grant = asyncio.ensure_future(bucket.acquire(priority))
        end = asyncio.ensure_future(view.ended.wait())
        try:
            await asyncio.wait((grant, end), return_when=asyncio.FIRST_COMPLETED)
        finally:
            end.cancel()
            if not grant.done():
                grant.cancel()
        if grant.cancelled():
            return False
        if not grant.done():
            with contextlib.suppress(asyncio.CancelledError):
                await grant
            return False
        grant.result()  # granted (even if the turn ended just now): use it
        return True

    def _latest(self, view: _View, msg: _Msg, frame: Frame, bucket: TokenBucket) -> Frame:
        """The frame to send now that the budget granted the operation: the text that
        arrived while it waited goes out with it, and so does the end of the turn if
        the same budget pays for that. Otherwise (a Slack reply ending before its
        stream could start; a rollover) the frame the bucket was chosen for is sent
        and the next flush sends the rest."""
        self._frames(view)
        latest = self._display(view, msg, view.msgs.index(msg))
        if latest.state == frame.state:
            return latest
        if not self.sink.chooses_budget:
            return latest
        if msg.ref is not None and self.sink.budget(msg.ref, latest) is bucket:
            return latest
        return frame

    def _give_up(self, view: _View, why: str) -> None:
        """Nothing more can be written for this turn: keep what is shown, count the loss."""
        view.dead = why
        view.opened.set()
        self.lost_ops += 1
        log.warning("stopped writing turn %s: %s", view.turn.turn_id, why)
        for m in view.msgs:
            if m.ref is not None and not m.closed:
                m.closed = True
                self.ledger.close(m.entry)
                with contextlib.suppress(Exception):
                    self.sink.abandon(m.ref)

    def _reopen(self, view: _View, msg: _Msg) -> None:
        """``msg`` can no longer be edited: it keeps what it showed, the rest moves to a new message."""
        msg.closed = True
        self.ledger.close(msg.entry)
        cut = msg.start + msg.sent_raw
        text = view.text()
        end = msg.end
        if end is not None and cut >= end:
            return  # everything this message was meant to carry is already shown
        msg.end = cut
        idx = view.msgs.index(msg)
        view.msgs.insert(idx + 1, _Msg(cut, end=end, fence_in=open_fence_at(text, cut)))
        view.dirty.set()
