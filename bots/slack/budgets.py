"""Slack's rate limits as budgets shared by every reply in a workspace.

Limits are per method per workspace (https://docs.slack.dev/apis/web-api/rate-limits),
except ``chat.postMessage``: about one per second per channel, "while also maintaining a
workspace-wide limit" whose figure Slack does not publish (Parley assumes 300 per minute).
A post draws on both: its channel's rate and the workspace's window
(:class:`ChannelPosts`). Every posted reply still to write its final text holds a slot of
that window (:class:`PostWindow`), so under a heavy load progress never spends what the
finals will need; a summary or stage title waits behind those slots too
(:meth:`WorkspaceBudgets.notices`), a parent message does not.

The windows (:class:`SlackWindow`) serve a final as soon as it may go, even while their
grant loop sleeps for a progress update held back until the window slides. At most a
tenth of chat.appendStream's per-minute limit of replies stream at once
(:meth:`WorkspaceBudgets.can_stream`): the others are posted, and draw on chat.update and
their channel's own rate.

Budgets are kept per workspace and per channel only while they matter
(:class:`IdleMap`): a process that served thousands of channels holds the
buckets of the ones written to recently, not of every channel it ever saw.

Replicas serving the same workspace (several processes behind one Request URL,
or Socket Mode connections) share its limits through the coordinator
(:meth:`WorkspaceBudgets.share`, Redis): each method's budget and each channel's
chat.postMessage budget is one key per workspace (team id), so together they stay
within what Slack allows the app there, and a 429 seen by one pauses all.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from core.budget import TokenBucket, WindowBudget
from core.coord import Coordinator

#: Calls per minute per workspace, from Slack's published tiers.
TIER_LIMITS: dict[str, int] = {
    "chat.update": 50,  # Tier 3
    "chat.startStream": 20,  # Tier 2
    "chat.appendStream": 100,  # Tier 4
    "chat.stopStream": 20,  # Tier 2
    # "Special rate limits apply" (https://docs.slack.dev/reference/methods/assistant.threads.setStatus):
    # Parley keeps to a Tier 3 pace, two calls per discussion and one per consensus stage.
    "assistant.threads.setStatus": 50,
    # Slack keeps a workspace-wide limit on chat.postMessage besides the per-channel one, without a
    # figure (https://docs.slack.dev/apis/web-api/rate-limits): 300 per minute assumed.
    "chat.postMessage": 300,
}
#: chat.postMessage: about one per second per channel ("short bursts >1 allowed", of unknown size: none).
POST_PER_CHANNEL_PER_SECOND = 1.0
POST_BURST = 1

K = TypeVar("K")
V = TypeVar("V")


class IdleMap(Generic[K, V]):
    """Per-key state, created on first use and dropped once idle.

    A value stays while anyone still holds it (looked up weakly, so two holders
    never get two values for one key) and, beyond that, while ``idle(value)`` is
    false: a bucket that granted a call a moment ago, or is paused after a 429,
    still has state a fresh one would not. Idle values are swept whenever the
    map doubles past ``keep``, so its size stays within about twice the busy
    keys (or ``keep``), whatever number of keys it has seen.
    """

    def __init__(self, make: Callable[[K], V], idle: Callable[[V], bool], *, keep: int = 32) -> None:
        self.make = make
        self.idle = idle
        self.keep = keep
        self._held: weakref.WeakValueDictionary[K, V] = weakref.WeakValueDictionary()
        self._warm: dict[K, V] = {}
        self._sweep_at = keep

    def get(self, key: K) -> V:
        value = self._held.get(key)
        if value is None:
            value = self._held[key] = self.make(key)
        self._warm[key] = value
        if len(self._warm) >= self._sweep_at:
            self.sweep()
        return value

    def sweep(self) -> None:
        for key in [k for k, v in self._warm.items() if self.idle(v)]:
            del self._warm[key]
        self._sweep_at = max(self.keep, 2 * len(self._warm))

    def quiet(self) -> bool:
        """Every value is idle (those nobody holds any more included)."""
        return all(self.idle(v) for v in list(self._held.values()))

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._held.keys()))


def tier_bucket(
    per_minute: int, name: str, window: float = 60.0, clock: Callable[[], float] = time.monotonic
) -> WindowBudget:
    """Slack's "N per minute" as a sliding window, kept one call below the limit so
    that network jitter between our clock and Slack's cannot push a burst over it."""
    # Stream starts and stops are not progress updates: they may use the whole burst.
    paced = name in ("chat.update", "chat.appendStream", "chat.postMessage")
    bucket = SlackWindow(per_minute - 1, window, paced=paced, name=name, clock=clock)
    if name == "chat.appendStream":
        # Appends may burst over three quarters of the window: the live streams are capped
        # (WorkspaceBudgets.can_stream) and each one's final keeps its slot (the reserve).
        bucket.credit_cap = bucket.credit = float(bucket.limit * 3 // 4)
    return bucket


class SlackWindow(WindowBudget):
    """A :class:`WindowBudget` whose grant loop, while it sleeps until the first waiter's turn, is
    woken by a more urgent waiter. A progress update kept back by the slots held for finals sleeps
    until the window slides (up to a minute); a final arriving meanwhile, which may use those
    slots now, is served at once instead of after that sleep."""

    async def acquire(self, priority: float = 1.0) -> None:
        timer = self._timer
        if (
            timer is not None
            and not timer.done()
            and not self._asking  # a shared take in flight is not a sleep: let it finish
            and self._waiters
            and priority < self._waiters[0][0]
        ):
            timer.cancel()
            self._timer = None  # acquire starts the loop again, for this waiter first
        await super().acquire(priority)

    def free_now(self) -> int:
        """Calls the window lets through right now (finals may use every one)."""
        return self._free(self.clock()) if self.clock() >= self.paused_until else 0

    def expected_wait(self) -> float:
        """About how long a progress update asked now would wait: until the window lets one
        through, and a slot's time for each one already waiting."""
        slot = self.window / self.limit
        return self.wait_time(1.0) + len(self._waiters) * max(slot, self.pace)


class PostWindow(SlackWindow):
    """The workspace's chat.postMessage window. The slots it holds back from progress (posting a
    reply's first message, continuing it in a new one, a summary) are one for each posted reply
    still to write its final (``due``: kept by the sinks from the moment a reply is to be posted,
    before it is): a final that finds chat.update short goes as a post, and must not find this
    window spent, or it would wait up to a minute for it to slide. So the window never admits more
    replies than it can finish; one that does not fit now is posted with its final."""

    def __init__(self, limit: int, window: float, *, name: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        #: Posted replies (sink, turn, part) whose final is still to be written.
        self.due: set[tuple[int, str, int]] = set()
        super().__init__(limit, window, paced=True, name=name, clock=clock)
        self.reserve_cap = limit

    @property  # type: ignore[override]
    def claims(self) -> int:
        return len(self.due)

    @claims.setter
    def claims(self, value: int) -> None:
        """Claims are ``due`` here (the ledger's claims for posted messages are on chat.update)."""


class ChannelPosts(TokenBucket):
    """chat.postMessage in one channel: the channel's own rate (this bucket) and the workspace's
    window (``workspace``) alike. A grant takes both (the workspace's first); a 429 pauses both
    (Slack's answer does not say which limit it was).

    ``notice`` (a summary, a stage title): in the workspace's window it waits like progress, behind
    the slots held for the answers' finals, whatever priority the renderer gives it."""

    def __init__(self, rate: float, burst: float, name: str, *, workspace: WindowBudget,
                 clock: Callable[[], float] = time.monotonic, notice: bool = False) -> None:
        super().__init__(rate, burst, name=name, clock=clock)
        self.workspace = workspace
        self.notice = notice
        #: The bucket of the channel's replies (the notices' own is a view on the same rate).
        self.channel: TokenBucket = self

    def _ws_priority(self, priority: float) -> float:
        return max(priority, 1.0) if self.notice else priority

    async def acquire(self, priority: float = 1.0) -> None:
        # The workspace's window first: a post may wait long there, and the channel's rate is
        # then kept right before the call (posts granted together there would burst in the channel).
        await self.workspace.acquire(self._ws_priority(priority))
        await TokenBucket.acquire(self.channel, priority)  # the channel's own rate

    def try_acquire(self, priority: float = 1.0) -> bool:
        """Never: a grant takes two budgets, one after the other (use :meth:`acquire`)."""
        return False

    def ready(self) -> bool:
        """Whether a progress post could go right now: the channel's rate and the workspace's window
        both have room (``available`` and ``wait_time`` are the channel's own, as its grant loop
        uses them)."""
        return self.channel.available() and self.workspace.available()

    def expected_wait(self) -> float:
        """About how long a progress post asked now would wait, in the workspace's window and then
        in the channel (a token's time for each post already waiting there)."""
        ch = self.channel
        own = TokenBucket.wait_time(ch, 1.0) + len(ch._waiters) / ch.rate if ch.rate else math.inf
        ws = self.workspace
        return max(own, ws.expected_wait() if isinstance(ws, SlackWindow) else ws.wait_time(1.0))

    def pause(self, seconds: float) -> None:
        TokenBucket.pause(self.channel, seconds)
        self.workspace.pause(seconds)

    def idle(self) -> bool:
        """The channel's own rate is back to new (the workspace's window is the workspace's)."""
        return super().idle() if self.channel is self else self.channel.idle()


@dataclass
class WorkspaceBudgets:
    """Every reply in a workspace draws from these, whatever discussion it belongs to."""

    limits: dict[str, int] = field(default_factory=lambda: dict(TIER_LIMITS))
    window: float = 60.0  # seconds the per-minute limits are counted over (benchmarks compress time)
    post_rate: float = POST_PER_CHANNEL_PER_SECOND
    #: Slack's seconds per second of this clock: a 429's Retry-After (Slack's seconds) is divided by
    #: it (benchmarks compress time; 1 in service).
    time_scale: float = 1.0
    clock: Callable[[], float] = time.monotonic
    buckets: dict[str, WindowBudget] = field(default_factory=dict)
    #: chat.postMessage buckets of the channels written to recently (or still being written to).
    channels: IdleMap[str, ChannelPosts] = field(init=False)
    #: Native streams started and not yet stopped (each will need a chat.stopStream).
    live_streams: int = 0
    #: Replies that chose to stream and are waiting for their chat.startStream.
    starting: int = 0
    #: At most this many streams live at once (None: a tenth of chat.appendStream's per-minute
    #: limit): each wants an append every second or so from the workspace's window, while a posted
    #: reply draws on chat.update and on its channel's own chat.postMessage rate.
    max_streams: int | None = None
    #: Posted messages whose final was sent to chat.update's window and not yet written.
    finals_on_update: set[int] = field(default_factory=set)
    streams_enabled: bool = True
    #: The coordinator these limits are shared through, and the workspace's key there (:meth:`share`).
    coord: Coordinator | None = None
    workspace: str = ""

    def __post_init__(self) -> None:
        for method, n in self.limits.items():
            self.buckets[method] = tier_bucket(n, method, self.window, self.clock)
        if "chat.postMessage" in self.buckets:
            limit = self.buckets["chat.postMessage"].limit
            self.buckets["chat.postMessage"] = PostWindow(limit, self.window, name="chat.postMessage", clock=self.clock)
        self.channels = IdleMap(self._post_bucket, ChannelPosts.idle)
        if self.coord is not None:
            self.share(self.coord, self.workspace)

    @property
    def post_window(self) -> PostWindow:
        return self.buckets["chat.postMessage"]  # type: ignore[return-value]

    def _post_bucket(self, channel: str) -> ChannelPosts:
        bucket = ChannelPosts(self.post_rate * 0.95, POST_BURST, f"post:{channel}",
                              workspace=self.buckets["chat.postMessage"], clock=self.clock)
        if self.coord is not None and self.coord.shared:
            bucket.share(self.coord, f"slack:{self.workspace}:post:{channel}")
        return bucket

    def share(self, coord: Coordinator | None, workspace: str) -> WorkspaceBudgets:
        """Share these limits with every replica serving ``workspace`` (its team id) through
        ``coord``; a coordinator of this process only (no Redis) changes nothing. Returns self."""
        self.coord, self.workspace = coord, workspace
        if coord is None or not coord.shared:
            return self
        for method, bucket in self.buckets.items():
            bucket.share(coord, f"slack:{workspace}:{method}")
        for channel in self.channels:
            self.channels.get(channel).share(coord, f"slack:{workspace}:post:{channel}")
        return self

    def __getitem__(self, method: str) -> WindowBudget:
        return self.buckets[method]

    def post(self, channel: str) -> ChannelPosts:
        """chat.postMessage in ``channel`` (its rate and the workspace's window)."""
        return self.channels.get(channel)

    def notices(self, channel: str) -> ChannelPosts:
        """chat.postMessage in ``channel`` for a summary or a stage title: the channel's rate as
        :meth:`post`, and in the workspace's window behind the slots held for answers' finals."""
        posts = self.post(channel)
        view = ChannelPosts(posts.rate, posts.capacity, posts.name, workspace=posts.workspace,
                            clock=self.clock, notice=True)
        view.channel = posts
        return view

    def retry_after(self, seconds: float) -> float:
        """A 429's Retry-After (Slack's seconds) on this clock."""
        return seconds / self.time_scale

    def can_stream(self, here: int = 0) -> bool:
        """A new reply may stream natively: a start token is free now, the stops keep up, and the
        appends can serve one more stream. ``here``: the streams its discussion has already; while
        others stream in the workspace too, each discussion streams one reply at a time (the others
        are posted, and draw on their channel's rate)."""
        cap = self.limits["chat.appendStream"] // 10 if self.max_streams is None else self.max_streams
        busy = self.live_streams + self.starting
        return (
            self.streams_enabled
            and self.buckets["chat.startStream"].available()
            and busy < min(cap, self.limits["chat.stopStream"])
            and (here == 0 or busy == here)
        )

    def idle(self) -> bool:
        """Nothing this workspace's budgets hold would differ from new ones."""
        return (
            self.live_streams == 0
            and self.starting == 0
            and not self.finals_on_update
            and self.streams_enabled
            and all(b.idle() for b in self.buckets.values())
            and self.channels.quiet()
        )
