"""Stream rendering shared by every front-end.

The :class:`Renderer` turns the engine's events into calls on a small
:class:`Sink` (post a message, edit it). It

- coalesces deltas: a message is re-sent with its latest text when a token
  of budget is granted, never once per delta;
- keeps every message under ``sink.limit`` by rolling over into continuation
  messages at safe boundaries (paragraph, line, sentence, word; never inside a
  code block unless a block alone exceeds the limit, in which case the fence is
  closed and reopened);
- spends per-destination :class:`TokenBucket` budgets shared by all concurrent
  turns writing to the same place, with final edits first and the stalest
  message next;
- honours a platform 429 (:class:`RateLimited`) by pausing the bucket and
  re-sending the same text later: nothing is dropped;
- ends a failed turn's message with what was shown plus the reason;
- stops writing a turn the platform will never accept again
  (:class:`Undeliverable`: channel archived, bot removed) or that kept failing
  for ``give_up_after`` seconds, instead of retrying for ever.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

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

log = logging.getLogger("parley.render")

State = Literal["streaming", "continued", "done", "failed"]


class RateLimited(Exception):
    """Raised by a sink when the platform answers 429; the op is retried later."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after:.2f}s")
        self.retry_after = retry_after


class MessageClosed(Exception):
    """Raised by a sink when a message can no longer be edited (a Slack stream that
    expired, a message deleted by a moderator). The renderer ends that message at what
    it last showed and carries the rest of the text into a new message."""


class Undeliverable(Exception):
    """Raised by a sink when the platform will never accept this operation (the
    channel was archived or deleted, the bot was removed). The renderer stops
    writing that turn; what was already shown stays."""


class TokenBucket:
    """An async token bucket with prioritised waiters (lower priority value first).

    Shared by every renderer that writes through the same platform budget (a
    Slack method per workspace, a Discord channel). ``rate`` may be ``inf``.
    """

    def __init__(self, rate: float, burst: float = 1.0, name: str = "") -> None:
        self.rate = rate
        self.capacity = max(1.0, burst)
        self.tokens = self.capacity
        self.name = name
        self.updated = time.monotonic()
        self.paused_until = 0.0
        self.granted = 0
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.Task[None] | None = None

    def _refill(self, now: float) -> None:
        if math.isinf(self.rate):
            self.tokens = self.capacity
        else:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def _try_take(self, priority: float = 1.0) -> bool:
        now = time.monotonic()
        if now < self.paused_until:
            return False
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            self.granted += 1
            return True
        return False

    def available(self) -> bool:
        """Whether a token could be granted right now without waiting (does not take it)."""
        now = time.monotonic()
        if now < self.paused_until or self._waiters:
            return False
        self._refill(now)
        return self.tokens >= 1

    async def acquire(self, priority: float = 1.0) -> None:
        if not self._waiters and self._try_take(priority):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._grant_loop())
        await fut

    async def _grant_loop(self) -> None:
        while self._waiters:
            while self._waiters and self._waiters[0][2].done():
                heapq.heappop(self._waiters)  # cancelled waiter
            if not self._waiters:
                break
            if self._try_take(self._waiters[0][0]):
                heapq.heappop(self._waiters)[2].set_result(None)
                continue
            now = time.monotonic()
            wait = self._refill_wait(now, self._waiters[0][0])
            await asyncio.sleep(max(self.paused_until - now, wait, 0.001))

    def _refill_wait(self, now: float, priority: float) -> float:
        """Seconds until the next token could exist (pauses aside)."""
        return (1 - self.tokens) / self.rate if self.rate else 1.0

    def pause(self, seconds: float) -> None:
        """After a 429: nothing is granted for ``seconds``, and the bucket restarts empty."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)
        self.tokens = 0.0
        self.updated = self.paused_until


class WindowBudget(TokenBucket):
    """At most ``limit`` grants in any sliding ``window`` seconds.

    This is how "N calls per minute" limits behave when a platform allows bursts
    (Slack's tiers): the whole allowance is usable at once, and each call frees
    its slot ``window`` seconds later. A token bucket that must never exceed the
    same limit has to keep its burst small, and then sits idle while work waits.

    Non-urgent requests (priority ≥ 1: intermediate edits) leave room in the
    window for the urgent ones still to come (priority < 1: final texts,
    rollovers): ``claims`` counts the messages that will need a final operation
    from this budget, and progress updates only spend slots beyond those (at
    most an eighth of the window is held back this way). They
    also draw on a credit that refills at the sustained rate (one per
    ``window / limit`` seconds) and holds at most half the window: a lone reply
    gets the burst and stays fresh, while many concurrent replies are paced
    instead of spending the whole window in their first seconds and leaving the
    finals to queue behind it. Urgent work may use the whole window at once.

    A slot is held ``latency`` seconds (default 5% of the window) beyond the
    window because the platform counts a call when it arrives, a little after
    it was granted here.
    """

    def __init__(
        self, limit: int, window: float, *, latency: float | None = None, paced: bool = True, name: str = ""
    ) -> None:
        super().__init__(limit / window, limit, name=name)
        self.limit = limit
        self.window = window + (0.05 * window if latency is None else latency)
        self.claims = 0
        self.reserve_cap = limit // 8  # none on a small window: every slot counts there
        self.stamps: collections.deque[float] = collections.deque()
        self.pace = self.window / limit if paced else 0.0
        self.credit_cap = max(1.0, limit // 2)
        self.credit = self.credit_cap
        self.credit_at = time.monotonic()

    @property
    def reserve(self) -> int:
        # Capped: slots held for finals that are not ready yet are capacity nobody
        # uses, and new messages (progress too) would starve behind them.
        return min(self.claims, self.reserve_cap)

    def claim(self, n: int = 1) -> None:
        """``n`` more messages will need a final operation from this budget (negative: released)."""
        self.claims = max(0, self.claims + n)

    def _free(self, now: float) -> int:
        while self.stamps and self.stamps[0] <= now - self.window:
            self.stamps.popleft()
        return self.limit - len(self.stamps)

    def _credit(self, now: float) -> float:
        if self.pace:
            self.credit = min(self.credit_cap, self.credit + (now - self.credit_at) / self.pace)
        self.credit_at = now
        return self.credit if self.pace else math.inf

    def _try_take(self, priority: float = 1.0) -> bool:
        now = time.monotonic()
        if now < self.paused_until:
            return False
        progress = priority >= 1
        if progress and self._credit(now) < 1:
            return False
        if self._free(now) >= 1 + (self.reserve if progress else 0):
            self.stamps.append(now)
            self.granted += 1
            if progress and self.pace:
                self.credit -= 1
            return True
        return False

    def available(self) -> bool:
        now = time.monotonic()
        return (
            now >= self.paused_until
            and not self._waiters
            and self._credit(now) >= 1
            and self._free(now) >= 1 + self.reserve
        )

    def _refill_wait(self, now: float, priority: float) -> float:
        progress = priority >= 1
        short = 1 + (self.reserve if progress else 0) - self._free(now)
        if short <= 0:
            wait = 0.0
        elif short <= len(self.stamps):
            wait = self.stamps[short - 1] + self.window - now
        else:
            # More messages await their finals than the window holds: no progress
            # update fits until some finish; look again a slot's time later.
            wait = self.window / self.limit
        if progress and self.pace:
            wait = max(wait, (1 - self._credit(now)) * self.pace)
        return wait

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


UNLIMITED_RATE = math.inf
_EPOCH = time.monotonic()


def rank(urgent: bool, last_flush: float) -> float:
    """A waiter's priority: finals and rollovers (< 1) before progress updates (≥ 1),
    and within each, the message shown longest ago first (a message never shown
    first of all). Notices sit at 0.5. The age term stays below 0.4 (for about
    nine months of process life; FIFO after that) so the classes never mix."""
    age = min(0.4, max(0.0, last_flush - _EPOCH) / 6e7) if last_flush else 0.0
    return (0.0 if urgent else 1.0) + age


@dataclass(slots=True)
class Frame:
    """What one platform message should show now."""

    turn: TurnInfo
    text: str  # display text (fences closed/reopened across a rollover)
    raw: str  # the exact slice of the streamed answer this message carries
    part: int  # 1 for the first message of a turn, 2… for continuations
    state: State
    notice: str | None = None  # the error, when state == "failed"


class Sink(Protocol):
    """A destination: one thread/channel on one platform."""

    #: Max characters of ``Frame.text`` per message (net of the sink's own decoration).
    limit: int
    #: Seconds between two edits of the same message (freshness vs. cost).
    min_interval: float
    post_budget: TokenBucket
    edit_budget: TokenBucket

    async def post(self, frame: Frame) -> Any:
        """Create a message; return a reference for later edits. May raise RateLimited."""
        ...

    async def edit(self, ref: Any, frame: Frame) -> None:
        """Replace a message's content. May raise RateLimited."""
        ...

    async def notice(self, event: Event) -> None:
        """Show a non-turn event (discussion start, stage, summary); budget already spent."""
        ...

    # Optional: ``budget(ref, frame) -> TokenBucket`` (see :func:`budget_for`),
    # ``shows(event) -> bool`` (whether ``notice`` posts anything for it) and
    # ``abandon(ref)``, called for each open message of a turn the renderer gave up on
    # (to release stream slots and budget claims and forget the message for recovery).


def budget_for(sink: Sink, ref: Any, frame: Frame) -> TokenBucket:
    """The bucket the next operation on a message draws from.

    A sink whose platform offers several ways to write a message (Slack: post and
    update, or a native stream) may define ``budget(ref, frame)`` to choose per
    operation; otherwise posts use ``post_budget`` and edits ``edit_budget``.
    """
    choose = getattr(sink, "budget", None)
    if choose is not None:
        bucket: TokenBucket = choose(ref, frame)
        return bucket
    return sink.post_budget if ref is None else sink.edit_budget


# --- safe split points ---------------------------------------------------------------

_FENCE = re.compile(r"^\s*```(.*)$", re.M)


def _open_fence_at(text: str, pos: int) -> str | None:
    """The info string of the code fence open at ``pos``, or None outside code."""
    lang: str | None = None
    for m in _FENCE.finditer(text, 0, pos):
        lang = None if lang is not None else m.group(1).strip()
    return lang


def split_point(text: str, limit: int) -> int:
    """Where to cut ``text`` (longer than ``limit``) so the head is ≤ limit and cut safely."""
    window = text[: limit + 1]
    floor = limit // 3  # never cut so early that messages become tiny
    for pattern in ("\n\n", "\n", ". ", "! ", "? ", " "):
        idx = window.rfind(pattern, floor, limit)
        while idx > 0:
            cut = idx + len(pattern)
            if cut <= limit and (_open_fence_at(text, cut) is None or pattern == " "):
                return cut
            idx = window.rfind(pattern, floor, idx)
    # Inside a long code block: cut at a line end and let the fences be re-balanced.
    idx = window.rfind("\n", floor, limit)
    if idx > 0:
        return idx + 1
    idx = window.rfind(" ", floor, limit)
    return idx + 1 if idx > 0 else limit


# --- the renderer ------------------------------------------------------------------------


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


@dataclass(slots=True)
class _View:
    turn: TurnInfo
    parts: list[str] = field(default_factory=list)
    length: int = 0
    msgs: list[_Msg] = field(default_factory=lambda: [_Msg(0)])
    final: State | None = None
    notice: str | None = None
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    last_flush: float = 0.0
    task: asyncio.Task[None] | None = None
    visible_at: list[tuple[int, float]] = field(default_factory=list)
    failing_since: float | None = None  # first failure of the current run of failed ops
    dead: str | None = None  # why nothing more can be written for this turn

    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""


class Renderer:
    """Render one discussion's events onto one sink.

    ``on_visible(turn_id, n_chars, t)`` (optional) is called whenever the first
    ``n_chars`` of a turn became visible on the platform: benchmarks use it to
    measure freshness. ``on_post``/``on_done`` let a front-end record open
    messages so that a restart can mark them interrupted.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        on_post: Callable[[TurnInfo, Any], None] | None = None,
        on_done: Callable[[TurnInfo, Any], None] | None = None,
        on_visible: Callable[[str, int, float], None] | None = None,
        max_op_retries: int = 5,
        give_up_after: float = 300.0,
    ) -> None:
        self.sink = sink
        self.views: dict[str, _View] = {}
        self.on_post = on_post
        self.on_done = on_done
        self.on_visible = on_visible
        self.max_op_retries = max_op_retries
        self.give_up_after = give_up_after
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
                    self.finish(ev.turn.turn_id, ev.text)
                elif isinstance(ev, TurnFailed):
                    self.fail(ev.turn.turn_id, ev.text, ev.error.get("message", "failed"))
                elif isinstance(ev, (StageStarted, DiscussionStarted)):
                    await self._notice(ev)
                elif isinstance(ev, DiscussionFinished):
                    last = ev
        finally:
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

    def finish(self, turn_id: str, text: str) -> None:
        view = self.views[turn_id]
        view.parts[:] = [text]
        view.length = len(text)
        view.final = "done"
        view.dirty.set()

    def fail(self, turn_id: str, text: str, notice: str) -> None:
        view = self.views[turn_id]
        shown = view.text()
        # Keep whatever was shown; prefer the engine's copy if it has more.
        view.parts[:] = [text if len(text) >= len(shown) else shown]
        view.length = len(view.parts[0])
        view.final = "failed"
        view.notice = notice
        view.dirty.set()

    async def drain(self) -> None:
        """Wait until every turn's last frame is on the platform."""
        for view in list(self.views.values()):
            if view.final is None:  # the stream was cut off without a result
                self.fail(view.turn.turn_id, "", "Interrupted before the answer was complete.")
        tasks = [v.task for v in self.views.values() if v.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def abort(self) -> None:
        for v in self.views.values():
            if v.task:
                v.task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*(v.task for v in self.views.values() if v.task), return_exceptions=True)

    # --- flushing -------------------------------------------------------------------------------
    async def _notice(self, ev: Event) -> None:
        shows = getattr(self.sink, "shows", None)
        if shows is not None and not shows(ev):
            return  # nothing to post: spend no budget on it
        await self.sink.post_budget.acquire(0.5)
        for attempt in range(self.max_op_retries):
            try:
                await self.sink.notice(ev)
                self.ops += 1
                return
            except RateLimited as rl:
                self.rate_limited += 1
                self.sink.post_budget.pause(rl.retry_after)
                await self.sink.post_budget.acquire(0.5)
            except Undeliverable as e:
                log.warning("could not post a %s notice: %s", ev.type, e)
                break
            except Exception:
                log.exception("posting a %s notice failed (attempt %d)", ev.type, attempt + 1)
                await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
        self.lost_ops += 1

    async def _flusher(self, view: _View) -> None:
        try:
            while True:
                await view.dirty.wait()
                if view.final is None:
                    wait = view.last_flush + self.sink.min_interval - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                view.dirty.clear()
                await self._sync(view)
                view.last_flush = time.monotonic()
                if view.dead is not None or (view.final is not None and not view.dirty.is_set()):
                    if self.on_done:
                        for m in view.msgs:
                            if m.ref is not None:
                                self.on_done(view.turn, m.ref)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rendering turn %s failed", view.turn.turn_id)

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
            view.msgs.append(_Msg(cut, fence_in=_open_fence_at(text, cut)))

    def _display(self, view: _View, msg: _Msg, idx: int) -> Frame:
        text = view.text()
        raw = text[msg.start : msg.end] if msg.end is not None else text[msg.start :]
        display = raw
        if msg.fence_in is not None:
            display = f"```{msg.fence_in}\n" + display
        last = idx == len(view.msgs) - 1
        if msg.end is not None and _open_fence_at(text, msg.end) is not None:
            display = display.rstrip("\n") + "\n```"
        state: State
        if not last:
            state = "continued"
        elif view.final is None:
            state = "streaming"
        else:
            state = view.final
        return Frame(view.turn, display, raw, idx + 1, state, view.notice if last else None)

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
            bucket = budget_for(self.sink, msg.ref, frame)
            await bucket.acquire(priority)
            frame = self._latest(view, msg, frame, bucket)
            try:
                if creating:
                    msg.ref = await self.sink.post(frame)
                    if self.on_post:
                        self.on_post(view.turn, msg.ref)
                else:
                    await self.sink.edit(msg.ref, frame)
                self.ops += 1
                msg.sent, msg.sent_state, msg.sent_raw = frame.text, frame.state, len(frame.raw)
                view.failing_since = None
                if self.on_visible and frame.raw:
                    self.on_visible(view.turn.turn_id, msg.start + len(frame.raw), time.monotonic())
                return True
            except MessageClosed:
                self._reopen(view, msg)
                return False
            except Undeliverable as e:
                self._give_up(view, str(e) or type(e).__name__)
                return False
            except RateLimited as rl:
                self.rate_limited += 1
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
        view.dirty.set()  # try again on the next flush rather than drop the text
        return False

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
        if getattr(self.sink, "budget", None) is None:
            return latest
        if msg.ref is not None and budget_for(self.sink, msg.ref, latest) is bucket:
            return latest
        return frame

    def _give_up(self, view: _View, why: str) -> None:
        """Nothing more can be written for this turn: keep what is shown, count the loss."""
        view.dead = why
        self.lost_ops += 1
        log.warning("stopped writing turn %s: %s", view.turn.turn_id, why)
        abandon = getattr(self.sink, "abandon", None)  # optional: release what the sink holds
        for m in view.msgs:
            if m.ref is not None and not m.closed:
                m.closed = True
                if abandon is not None:
                    with contextlib.suppress(Exception):
                        abandon(m.ref)

    def _reopen(self, view: _View, msg: _Msg) -> None:
        """``msg`` can no longer be edited: it keeps what it showed, the rest moves to a new message."""
        msg.closed = True
        if self.on_done and msg.ref is not None:
            self.on_done(view.turn, msg.ref)
        cut = msg.start + msg.sent_raw
        text = view.text()
        end = msg.end
        if end is not None and cut >= end:
            return  # everything this message was meant to carry is already shown
        msg.end = cut
        idx = view.msgs.index(msg)
        view.msgs.insert(idx + 1, _Msg(cut, end=end, fence_in=_open_fence_at(text, cut)))
        view.dirty.set()


def summary_markdown(ev: DiscussionFinished) -> str:
    """The closing message of a discussion: time, tokens and cost per turn, and the total."""
    lines = []
    for t in ev.turns:
        stage = (
            f" · {t['stage']}" + (f" {t['round']}" if t["round"] else "") if t["stage"] != "answer" else ""
        )
        if t["status"] == "finished":
            ttft = f"{t['ttft_ms'] / 1000:.1f}s to first token, " if t["ttft_ms"] is not None else ""
            est = " (est.)" if t["estimated"] else ""
            lines.append(
                f"✅ {t['label']}{stage}: {ttft}{t['latency_ms'] / 1000:.1f}s, "
                f"{t['input_tokens']:,}+{t['output_tokens']:,} tokens{est}, ${t['cost_usd']:.4f}"
            )
        else:
            lines.append(f"⚠️ {t['label']}{stage}: {t['error']['kind']} — {t['error']['message']}")
    tot = ev.total
    lines.append(
        f"*Total*: {tot['turns']} turns ({tot['failed']} failed), {tot['input_tokens']:,}+"
        f"{tot['output_tokens']:,} tokens, ${tot['cost_usd']:.4f}, {tot['wall_ms'] / 1000:.1f}s"
    )
    if ev.ranking:
        lines.append(
            "*Peer ranking* (Borda): "
            + ", ".join(f"{i + 1}. {r['label']} ({r['score']})" for i, r in enumerate(ev.ranking))
        )
    if ev.message:
        lines.append(ev.message)
    return "\n".join(lines)
