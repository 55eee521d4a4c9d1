"""Budget arithmetic on a fake clock: no wall-clock bounds, no sleeping."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.budget import TokenBucket, WindowBudget, rank


class Clock:
    def __init__(self) -> None:
        self.now = 1024.0  # binary-exact, so sums of the test's steps compare exactly

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_bucket_refills_at_its_rate_and_available_only_peeks() -> None:
    clock = Clock()
    b = TokenBucket(2.0, 1, clock=clock)
    assert b.available() and b.available()  # peeking takes nothing
    assert b.try_acquire() and not b.try_acquire()
    assert b.wait_time() == pytest.approx(0.5)
    clock.advance(0.49)
    assert not b.try_acquire()
    clock.advance(0.02)
    assert b.try_acquire() and b.granted == 2


def test_bucket_pause_after_a_429_blocks_and_restarts_empty() -> None:
    clock = Clock()
    b = TokenBucket(4.0, 5, clock=clock)
    b.pause(2.0)
    assert not b.available() and not b.try_acquire()
    assert b.wait_time() == 2.25  # the pause, then one token at 4/s
    clock.advance(2.125)
    assert not b.try_acquire()  # half a token so far
    clock.advance(0.125)
    assert b.try_acquire() and not b.try_acquire()


def test_window_budget_bursts_half_the_window_then_paces_and_keeps_the_reserve() -> None:
    clock = Clock()
    w = WindowBudget(8, 4.0, latency=0.0, clock=clock)  # one slot's time: 0.5 s
    w.reserve_cap = 2
    w.claim(2)  # two messages in flight will need their final edit from this budget
    for _ in range(4):  # half the window is a burst of progress updates
        assert w.try_acquire(1.0)
    assert not w.try_acquire(1.0)  # the burst credit is spent
    assert w.wait_time(1.0) == 0.5  # then they are paced at the sustained rate
    clock.advance(0.5)
    assert w.try_acquire(1.0)
    clock.advance(0.5)
    assert w.try_acquire(1.0)
    clock.advance(0.5)
    # Six used, two free, two claimed: progress stops where the claims start.
    assert not w.try_acquire(1.0) and not w.available()
    assert w.try_acquire(0.0) and w.try_acquire(0.0)  # finals use the reserved slots at once
    assert not w.try_acquire(0.0)  # the window is full
    assert w.wait_time(0.0) == 2.5  # until the first slot ages out of the window
    clock.advance(2.5)
    assert w.try_acquire(0.0)


def test_window_budget_holds_back_at_most_an_eighth_of_the_window() -> None:
    clock = Clock()
    w = WindowBudget(16, 10.0, latency=0.0, paced=False, clock=clock)
    w.claim(20)  # many replies in flight: new messages must still get out
    assert w.reserve == 2
    granted = sum(w.try_acquire(1.0) for _ in range(20))
    assert granted == 14  # 16 slots, 2 held back for finals
    assert not w.available()
    assert w.try_acquire(0.0) and w.try_acquire(0.0)  # finals take the held-back slots
    assert not w.try_acquire(0.0)


def test_window_budget_latency_margin_holds_each_slot_longer_than_the_window() -> None:
    clock = Clock()
    w = WindowBudget(2, 1.0, clock=clock)  # default margin: 5% of the window
    assert w.try_acquire(0.0) and w.try_acquire(0.0) and not w.try_acquire(0.0)
    clock.advance(1.0)
    assert not w.try_acquire(0.0)  # the platform may count the call a little later
    clock.advance(0.051)
    assert w.try_acquire(0.0)


def test_window_budget_with_more_claims_than_slots_looks_again_a_slot_later() -> None:
    clock = Clock()
    w = WindowBudget(4, 0.2, latency=0.0, clock=clock)
    w.reserve_cap = 100  # hold back a slot for every claim
    w.claim(9)  # more messages in flight than the window holds
    assert not w.try_acquire(1.0)
    assert w.wait_time(1.0) == pytest.approx(0.05)  # no IndexError: a slot's time later
    for _ in range(4):
        assert w.try_acquire(0.0)
        w.claim(-1)
    w.claim(-5)
    clock.advance(0.2)
    assert w.try_acquire(1.0)  # claims released: progress fits again


async def test_window_budget_grant_loop_survives_more_claims_than_slots() -> None:
    # The real loop (real, short sleeps): a waiter for progress is granted once the
    # finals are done, instead of the loop dying on an empty stamp list.
    w = WindowBudget(4, 0.2, latency=0.0)
    w.reserve_cap = 100
    w.claim(9)
    progress = asyncio.ensure_future(w.acquire(1.0))
    await asyncio.sleep(0)
    assert not progress.done()
    for _ in range(9):
        await asyncio.wait_for(w.acquire(0.0), 5)
        w.claim(-1)
    await asyncio.wait_for(progress, 5)


def test_rank_puts_finals_before_progress_and_stale_before_fresh() -> None:
    now = time.monotonic()
    # never shown first, then the message shown longest ago; finals before any progress update
    assert rank(True, 0.0) < rank(True, now) < rank(True, now + 1000) < 1.0
    assert 1.0 == rank(False, 0.0) < rank(False, now) < rank(False, now + 1000)
    assert rank(True, now + 1e12) < 1.0 <= rank(False, 0.0)  # the age term never mixes the classes


def test_a_bucket_is_idle_only_when_a_new_one_would_be_the_same() -> None:
    clock = Clock()
    w = WindowBudget(4, 1.0, latency=0.0, clock=clock)
    assert w.idle()
    assert w.try_acquire(0.0) and not w.idle()  # spent within the window
    clock.advance(1.0)
    assert w.idle()
    w.claim(1)
    assert not w.idle()  # a message still needs its final from this budget
    w.claim(-1)
    w.pause(2.0)
    assert not w.idle()  # paused after a 429
    clock.advance(2.0)
    assert w.idle()
    b = TokenBucket(2.0, 2, clock=clock)
    assert b.try_acquire() and not b.idle()  # not full again yet
    clock.advance(0.5)
    assert b.idle()
