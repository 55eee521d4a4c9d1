"""Platform write budgets shared by every renderer writing to the same place.

A :class:`TokenBucket` is a rate with a burst; a :class:`WindowBudget` is an
"N calls per sliding window" limit (Slack's tiers, Discord's per-channel
buckets) with a reserve for messages still waiting for their final text.
Waiters are served by priority (:func:`rank`): finals and rollovers before
progress updates, the message shown longest ago first.

Both take an injectable ``clock`` (seconds, monotonic) so that their
arithmetic can be tested without wall-clock bounds; the grant loop still
sleeps on the event loop.

Shared limits. Replicas that write to the same place (two Slack processes for one
workspace, Discord shard processes of one bot) must not each spend the whole
limit. :meth:`TokenBucket.share` binds a bucket to a key of a shared coordinator
(:mod:`core.coord`, Redis): a grant then needs the local budget (priorities, the
reserve for finals, pacing, all as before) *and* one call from the shared limit
of the same size, taken atomically by the coordinator. Such a bucket grants only
through its grant loop, one waiter at a time in priority order, so the local
state checked before the round trip is the state committed after it. A pause
after a 429 is sent to the coordinator, so every replica pauses that key; a
pause another replica set is learned at the next take. While the coordinator is
unreachable nothing is granted (fail closed), the waiters keep waiting and the
loop asks again with a growing delay. Without a shared key (one process) a
bucket works exactly as before, with no extra step.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Self

from core.coord import Claims, Coordinator, Taken, Unavailable, retry_delay

log = logging.getLogger("parley.budget")


class TokenBucket:
    """An async token bucket with prioritised waiters (lower priority value first).

    Shared by every renderer that writes through the same platform budget (a
    Slack method per workspace, a Discord channel). ``rate`` may be ``inf``.
    """

    def __init__(
        self, rate: float, burst: float = 1.0, name: str = "", *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.rate = rate
        self.capacity = max(1.0, burst)
        self.tokens = self.capacity
        self.name = name
        self.updated = self.clock()
        self.paused_until = 0.0
        self.granted = 0
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.Task[None] | None = None
        #: (coordinator, key) when replicas share this limit (:meth:`share`).
        self.shared: tuple[Coordinator, str] | None = None
        #: Before this (our clock), the shared limit said no: a hint for :meth:`available`.
        self.shared_until = 0.0
        self._failures = 0
        self._sending: set[asyncio.Task[None]] = set()
        #: A shared take is in flight for the first waiter (it is not "waiting" for anyone else).
        self._asking = False

    def share(self, coord: Coordinator, key: str) -> Self:
        """Draw on the limit ``key`` of ``coord`` too: every replica's bucket bound to that key
        together stays within one bucket's limit (an unlimited rate is not shared)."""
        if not math.isinf(self.rate):
            self.shared = (coord, key)
        return self

    def _refill(self, now: float) -> None:
        if math.isinf(self.rate):
            self.tokens = self.capacity
        else:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def _can_take(self, priority: float = 1.0) -> bool:
        """Whether the local budget would grant a request of this priority now (takes nothing)."""
        now = self.clock()
        if now < self.paused_until:
            return False
        self._refill(now)
        return self.tokens >= 1

    def _commit(self, priority: float = 1.0) -> None:
        """Spend the local budget for one grant."""
        self.tokens -= 1
        self.granted += 1

    def _try_take(self, priority: float = 1.0) -> bool:
        if self._can_take(priority):
            self._commit(priority)
            return True
        return False

    def _queued(self) -> bool:
        """Someone waits here, beyond a shared take already in flight (that one is being granted
        now: it does not make a shared bucket look busy to the next caller)."""
        return len(self._waiters) > (1 if self._asking else 0)

    def available(self) -> bool:
        """Whether a token could be granted right now without waiting (does not take it)."""
        now = self.clock()
        if now < self.paused_until or now < self.shared_until or self._queued():
            return False
        self._refill(now)
        return self.tokens >= 1

    def try_acquire(self, priority: float = 1.0) -> bool:
        """Take a grant now if one is free and nobody is waiting; never waits. A shared
        bucket never grants this way (the shared take is a round trip): use :meth:`acquire`."""
        return self.shared is None and not self._waiters and self._try_take(priority)

    def wait_time(self, priority: float = 1.0) -> float:
        """Seconds until a request of this priority could be granted (0: now)."""
        now = self.clock()
        if now < self.paused_until:  # after a 429 the bucket restarts empty at the pause's end
            return self.paused_until - now + self._refill_wait(self.paused_until, priority)
        self._refill(now)
        local = 0.0 if self.tokens >= 1 else self._refill_wait(now, priority)
        return max(local, self.shared_until - now)

    async def acquire(self, priority: float = 1.0) -> None:
        if self.shared is None and not self._waiters and self._try_take(priority):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._grant_loop())
        await fut

    def _drop_cancelled(self) -> None:
        while self._waiters and self._waiters[0][2].done():
            heapq.heappop(self._waiters)  # cancelled waiter

    async def _grant_loop(self) -> None:
        while self._waiters:
            self._drop_cancelled()
            if not self._waiters:
                break
            priority = self._waiters[0][0]
            if self.shared is None:
                if self._try_take(priority):
                    heapq.heappop(self._waiters)[2].set_result(None)
                    continue
                await asyncio.sleep(max(self.wait_time(priority), 0.001))
                continue
            if not self._can_take(priority):
                await asyncio.sleep(max(self.wait_time(priority), 0.001))
                continue
            self._asking = True
            try:
                wait = await self._shared_take(priority)
            finally:
                self._asking = False
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            # Granted by the shared limit: the call will be made, so the local budget counts
            # it even if the waiter it was asked for left meanwhile (the next one gets it).
            self._commit(priority)
            self._drop_cancelled()
            if self._waiters:
                heapq.heappop(self._waiters)[2].set_result(None)

    async def _ask(self, coord: Coordinator, key: str, priority: float) -> Taken:
        return await coord.take_rate(key, self.rate, self.capacity)

    async def _shared_take(self, priority: float) -> float:
        """0 when the shared limit granted one call; otherwise seconds to wait before asking again."""
        assert self.shared is not None
        coord, key = self.shared
        try:
            taken = await self._ask(coord, key, priority)
        except Exception as e:
            # Fail closed: nothing is granted while the coordinator cannot say what the
            # other replicas spent. Unavailable is logged by the coordinator; anything else here.
            if not isinstance(e, Unavailable):
                log.exception("shared budget %s: the take failed", key)
            wait = retry_delay(self._failures)
            self._failures += 1
            self.shared_until = max(self.shared_until, self.clock() + wait)
            return wait
        self._failures = 0
        if taken.granted:
            return 0.0
        wait = max(taken.wait, 0.001)
        self.shared_until = max(self.shared_until, self.clock() + wait)
        if taken.paused:  # another replica saw a 429 on this key
            self._pause_local(wait)
        return wait

    def _refill_wait(self, now: float, priority: float) -> float:
        """Seconds until the next token could exist (pauses aside)."""
        return (1 - self.tokens) / self.rate if self.rate else 1.0

    def claim(self, n: int = 1) -> None:
        """``n`` more messages will need a final operation from this bucket (negative: released).
        A plain bucket keeps no reserve; :class:`WindowBudget` does."""

    def idle(self) -> bool:
        """Nothing would differ in a new bucket: no waiter, no pause, full again. A map of
        per-channel buckets may drop an idle one and make it anew when needed."""
        return self.available() and self.tokens >= self.capacity

    def pause(self, seconds: float) -> None:
        """After a 429: nothing is granted for ``seconds``, and the bucket restarts empty.
        A shared bucket pauses its key for every replica too (sent in the background)."""
        self._pause_local(seconds)
        self._share_pause(seconds)

    def _pause_local(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self.clock() + seconds)
        self.tokens = 0.0
        self.updated = self.paused_until

    def _share_pause(self, seconds: float) -> None:
        if self.shared is None or seconds <= 0:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        coord, key = self.shared
        task = loop.create_task(self._send_pause(coord, key, seconds))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    @staticmethod
    async def _send_pause(coord: Coordinator, key: str, seconds: float) -> None:
        try:
            await coord.pause(key, seconds)
        except Unavailable:
            pass  # the pause stays with this replica (the coordinator logged the outage)
        except Exception:
            log.exception("shared budget %s: sharing a pause failed", key)

    async def sent(self) -> None:
        """Wait until the pauses given to the coordinator were sent (tests, shutdown)."""
        if self._sending:
            await asyncio.gather(*list(self._sending), return_exceptions=True)


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
        self,
        limit: int,
        window: float,
        *,
        latency: float | None = None,
        paced: bool = True,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(limit / window, limit, name=name, clock=clock)
        self.limit = limit
        self.window = window + (0.05 * window if latency is None else latency)
        self.claims = 0
        self.reserve_cap = limit // 8  # none on a small window: every slot counts there
        self.stamps: collections.deque[float] = collections.deque()
        self.pace = self.window / limit if paced else 0.0
        self.credit_cap = max(1.0, limit // 2)
        self.credit = self.credit_cap
        self.credit_at = self.clock()
        #: This bucket among the replicas sharing its key (its claims are counted under it).
        self.replica = secrets.token_hex(6)

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

    def _can_take(self, priority: float = 1.0) -> bool:
        now = self.clock()
        if now < self.paused_until:
            return False
        progress = priority >= 1
        if progress and self._credit(now) < 1:
            return False
        return self._free(now) >= 1 + (self.reserve if progress else 0)

    def _commit(self, priority: float = 1.0) -> None:
        self.stamps.append(self.clock())
        self.granted += 1
        if priority >= 1 and self.pace:
            self.credit -= 1

    async def _ask(self, coord: Coordinator, key: str, priority: float) -> Taken:
        # Shared with the other replicas as well: the pacing of progress updates (one credit
        # bucket for all, at the window's sustained rate), and the slots held back for every
        # replica's messages still waiting for their finals.
        progress = priority >= 1
        pace = (1 / self.pace, self.credit_cap) if progress and self.pace else None
        claims = Claims(self.replica, self.claims, self.reserve_cap, progress)
        return await coord.take(key, self.limit, self.window, pace=pace, claims=claims)

    def idle(self) -> bool:
        """No claim, no waiter, no pause, and nothing spent within the window."""
        spent = bool(self.stamps) and self.stamps[-1] > self.clock() - self.window
        return self.claims == 0 and not spent and self.available()

    def available(self) -> bool:
        now = self.clock()
        return (
            now >= self.paused_until
            and now >= self.shared_until
            and not self._queued()
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

    def wait_time(self, priority: float = 1.0) -> float:
        now = self.clock()
        return max(self.paused_until - now, self.shared_until - now, self._refill_wait(now, priority), 0.0)

    def _pause_local(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self.clock() + seconds)


UNLIMITED_RATE = math.inf
_EPOCH = time.monotonic()


def rank(urgent: bool, last_flush: float) -> float:
    """A waiter's priority: finals and rollovers (< 1) before progress updates (≥ 1),
    and within each, the message shown longest ago first (a message never shown
    first of all). Notices sit at 0.5. The age term stays below 0.4 (for about
    nine months of process life; FIFO after that) so the classes never mix."""
    age = min(0.4, max(0.0, last_flush - _EPOCH) / 6e7) if last_flush else 0.0
    return (0.0 if urgent else 1.0) + age
