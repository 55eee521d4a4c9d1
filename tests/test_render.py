"""Renderer tests with a recording sink: limits, rollover, budgets, failures."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from core.budget import TokenBucket
from core.events import (
    DiscussionFinished,
    ErrorInfo,
    Event,
    StageStarted,
    TextDelta,
    Totals,
    TurnFailed,
    TurnFinished,
    TurnInfo,
    TurnStarted,
    TurnUsage,
)
from core.render import Renderer
from core.sink import Frame, MessageClosed, RateLimited, Sink, Undeliverable
from core.textsplit import split_point


class RecordingSink(Sink):
    def __init__(
        self,
        limit: int = 200,
        rate: float = 1000.0,
        burst: float = 1000.0,
        min_interval: float = 0.0,
        fail_every: int = 0,
    ) -> None:
        self.limit = limit
        self.min_interval = min_interval
        self.post_budget = TokenBucket(rate, burst)
        self.edit_budget = self.post_budget
        self.messages: dict[int, Frame] = {}
        self.order: list[int] = []
        self.calls: list[tuple[str, float]] = []
        self.notices: list[Event] = []
        self.fail_every = fail_every
        self._n = 0

    def _maybe_429(self) -> None:
        self._n += 1
        if self.fail_every and self._n % self.fail_every == 0:
            raise RateLimited(0.01)

    async def post(self, frame: Frame) -> int:
        self._maybe_429()
        assert len(frame.text) <= self.limit
        ref = len(self.order)
        self.order.append(ref)
        self.messages[ref] = frame
        self.calls.append(("post", asyncio.get_running_loop().time()))
        return ref

    async def edit(self, ref: int, frame: Frame) -> None:
        self._maybe_429()
        assert len(frame.text) <= self.limit
        self.messages[ref] = frame
        self.calls.append(("edit", asyncio.get_running_loop().time()))

    async def notice(self, event: Event) -> None:
        self.notices.append(event)

    def turn_text(self, turn_id: str) -> str:
        return "".join(f.raw for r, f in sorted(self.messages.items()) if f.turn.turn_id == turn_id)


def info(tid: str) -> TurnInfo:
    return TurnInfo(turn_id=tid, provider="p", provider_label="P", model="m")


async def events_for(
    texts: dict[str, str], *, chunk: int = 7, fail: set[str] = frozenset(), delay: float = 0.0
) -> AsyncIterator[Event]:
    for tid in texts:
        yield TurnStarted(info(tid))
    pos = {tid: 0 for tid in texts}
    while any(pos[t] < len(texts[t]) for t in texts):
        for tid, text in texts.items():
            if pos[tid] < len(text):
                yield TextDelta(tid, text[pos[tid] : pos[tid] + chunk])
                pos[tid] += chunk
        if delay:
            await asyncio.sleep(delay)
    for tid, text in texts.items():
        if tid in fail:
            yield TurnFailed(info(tid), ErrorInfo("truncated", "connection dropped"), text)
        else:
            yield TurnFinished(info(tid), text, TurnUsage(), 1.0, 2.0)
    yield DiscussionFinished("d", "finished", [], Totals(0, 0, 0, 0, 0.0, 0.0))


def prose(n_words: int, seed: int = 1) -> str:
    rnd = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "launch", "pricing", "thread", "stream"]
    out = []
    for i in range(n_words):
        out.append(rnd.choice(words))
        if i % 13 == 12:
            out.append(".\n\n" if i % 39 == 38 else ".")
    return " ".join(out)


async def test_final_text_equals_stream_and_respects_limit() -> None:
    texts = {"a": prose(300, 1), "b": prose(120, 2)}
    sink = RecordingSink(limit=200)
    r = Renderer(sink)
    await r.consume(events_for(texts))
    for tid, text in texts.items():
        assert sink.turn_text(tid) == text
        frames = [f for f in sink.messages.values() if f.turn.turn_id == tid]
        assert frames[-1].state == "done"
        assert all(f.state == "continued" for f in frames[:-1])
        assert len(frames) >= len(text) // 200
    assert isinstance(sink.notices[-1], DiscussionFinished)


async def test_rollover_never_splits_words() -> None:
    text = prose(400, 3)
    sink = RecordingSink(limit=150)
    await Renderer(sink).consume(events_for({"a": text}))
    frames = [f for f in sink.messages.values()]
    for f in frames[:-1]:
        assert f.raw[-1] in " \n." or f.raw.endswith(". "), repr(f.raw[-10:])


async def test_rollover_outside_code_blocks_and_fences_rebalanced() -> None:
    code = "```python\n" + "".join(f"x_{i} = {i}\n" for i in range(60)) + "```\n"
    text = "Intro paragraph here.\n\n" + code + "\nAfter the code.\n"
    sink = RecordingSink(limit=200)
    await Renderer(sink).consume(events_for({"a": text}))
    assert sink.turn_text("a") == text
    for f in sink.messages.values():
        assert f.text.count("```") % 2 == 0, f.text  # every message renders balanced fences
        assert len(f.text) <= 200


def test_split_point_prefers_paragraphs() -> None:
    text = "a" * 50 + "\n\n" + "b" * 50 + " " + "c" * 200
    assert split_point(text, 120) == 52


async def test_failure_keeps_shown_text_and_says_why() -> None:
    texts = {"ok": prose(50, 4), "bad": prose(80, 5)}
    sink = RecordingSink(limit=2000)
    await Renderer(sink).consume(events_for(texts, fail={"bad"}))
    bad = [f for f in sink.messages.values() if f.turn.turn_id == "bad"][-1]
    assert bad.state == "failed" and bad.notice == "connection dropped"
    assert bad.raw == texts["bad"]
    ok = [f for f in sink.messages.values() if f.turn.turn_id == "ok"][-1]
    assert ok.state == "done"


async def test_rate_limited_ops_lose_nothing() -> None:
    texts = {t: prose(150, i) for i, t in enumerate("abc")}
    sink = RecordingSink(limit=300, fail_every=3)
    r = Renderer(sink)
    await r.consume(events_for(texts))
    assert r.rate_limited > 0 and r.lost_ops == 0
    for tid, text in texts.items():
        assert sink.turn_text(tid) == text


async def test_shared_budget_is_never_exceeded_and_finals_complete() -> None:
    rate, burst = 40.0, 2.0
    sink = RecordingSink(limit=500, rate=rate, burst=burst)
    texts = {f"t{i}": prose(60, i) for i in range(8)}
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await Renderer(sink).consume(events_for(texts, chunk=5, delay=0.002))
    elapsed = loop.time() - t0
    # Token bucket invariant: no window ever sees more than burst + rate * window ops.
    times = sorted(t for _, t in sink.calls)
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            window = times[j] - start
            assert j - i + 1 <= burst + rate * window + 1e-6
    assert len(sink.calls) <= burst + rate * elapsed + 1
    for tid, text in texts.items():
        assert sink.turn_text(tid) == text


async def test_interrupted_stream_marks_open_messages() -> None:
    async def cut() -> AsyncIterator[Event]:
        yield TurnStarted(info("a"))
        yield TextDelta("a", "partial answer")

    sink = RecordingSink()
    await Renderer(sink).consume(cut())
    last = sink.messages[max(sink.messages)]
    assert last.state == "failed" and "Interrupted" in (last.notice or "")
    assert last.raw == "partial answer"


async def test_token_bucket_priority_orders_waiters() -> None:
    b = TokenBucket(rate=50, burst=1)
    await b.acquire()
    order: list[str] = []

    async def take(name: str, prio: float) -> None:
        await b.acquire(prio)
        order.append(name)

    await asyncio.gather(take("slow", 2.0), take("final", 0.0), take("mid", 1.0))
    assert order == ["final", "mid", "slow"]


@pytest.mark.parametrize("limit", [50, 97, 400])
async def test_many_limits_roundtrip(limit: int) -> None:
    text = prose(200, limit)
    sink = RecordingSink(limit=limit)
    await Renderer(sink).consume(events_for({"a": text}, chunk=11))
    assert sink.turn_text("a") == text


class ExpiringSink(RecordingSink):
    """Each message accepts ``life`` edits, then says it can no longer be edited
    (a Slack stream past its ~5 minute life)."""

    def __init__(self, life: int, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kw)
        self.life = life
        self.edits: dict[int, int] = {}
        self.stream_budget = TokenBucket(1000.0, 1000.0)
        self.routed: list[str] = []

    def budget(self, ref, frame):  # type: ignore[no-untyped-def]
        self.routed.append("post" if ref is None else "edit")
        return self.stream_budget

    async def edit(self, ref: int, frame: Frame) -> None:
        self.edits[ref] = self.edits.get(ref, 0) + 1
        if self.edits[ref] > self.life:
            raise MessageClosed()
        await super().edit(ref, frame)


async def test_a_closed_message_keeps_what_it_showed_and_the_rest_continues_below() -> None:

    text = "".join(f"word{i} " for i in range(300))
    sink = ExpiringSink(life=3, limit=10_000, min_interval=0.0)
    r = Renderer(sink)
    await r.consume(events_for({"t": text}, chunk=9, delay=0.001))
    parts = [f for _, f in sorted(sink.messages.items())]
    assert len(parts) > 1, "the expiring message must have continued in a new one"
    assert sink.turn_text("t") == text  # nothing lost, nothing repeated
    assert parts[-1].state == "done"
    assert r.lost_ops == 0
    # every operation drew from the bucket the sink chose
    assert sink.routed.count("post") == len(parts) and sink.stream_budget.granted == len(sink.routed)


class RefusingSink(RecordingSink):
    """The platform refuses every write for some turns after their first post
    (channel archived, bot removed), or fails with a transient-looking error for ever."""

    def __init__(self, refuse: set[str], error: type[Exception], **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kw)
        self.refuse = refuse
        self.error = error
        self.refused = 0

    async def edit(self, ref: int, frame: Frame) -> None:
        if frame.turn.turn_id in self.refuse:
            self.refused += 1
            raise self.error("channel archived")
        await super().edit(ref, frame)


async def test_an_undeliverable_turn_stops_at_once_and_the_others_finish() -> None:

    texts = {"a": prose(200, 1), "b": prose(200, 2)}
    sink = RefusingSink({"a"}, Undeliverable, limit=10_000)
    r = Renderer(sink)
    await asyncio.wait_for(r.consume(events_for(texts, chunk=9, delay=0.001)), 10)
    assert sink.turn_text("b") == texts["b"] and sink.messages[1].state == "done"
    assert sink.refused == 1  # no retry of a write the platform will never accept
    assert r.lost_ops == 1


async def test_a_sink_that_keeps_failing_is_given_up_after_the_deadline() -> None:
    texts = {"a": prose(100, 3), "b": prose(100, 4)}
    sink = RefusingSink({"a"}, ConnectionError, limit=10_000)
    r = Renderer(sink, max_op_retries=2, give_up_after=0.3)
    await asyncio.wait_for(r.consume(events_for(texts, chunk=9, delay=0.001)), 10)
    assert sink.turn_text("b") == texts["b"]
    assert sink.refused >= 2 and r.lost_ops == 1


async def test_a_stage_title_waits_for_the_earlier_turns_first_messages() -> None:
    """Under a tight budget, turn creates queued at progress priority must still land
    before the next stage's title (which is granted at notice priority)."""

    class Ordered(RecordingSink):
        def __init__(self) -> None:
            super().__init__(limit=10_000, rate=20.0, burst=1.0)
            self.log: list[str] = []

        async def post(self, frame: Frame) -> int:
            self.log.append(f"post:{frame.turn.turn_id}")
            return await super().post(frame)

        async def notice(self, event: Event) -> None:
            if isinstance(event, StageStarted):
                self.log.append(f"stage:{event.stage}")

    async def events() -> AsyncIterator[Event]:
        yield StageStarted("answer", 0, "Stage 1")
        for tid in ("a", "b", "c"):
            yield TurnStarted(info(tid))
        await asyncio.sleep(0.01)  # their placeholders queue for the budget while streaming
        for tid in ("a", "b", "c"):
            yield TurnFinished(info(tid), f"answer {tid}", TurnUsage(), 1.0, 2.0)
        yield StageStarted("review", 1, "Stage 2")
        yield TurnStarted(info("r"))
        yield TurnFinished(info("r"), "review", TurnUsage(), 1.0, 2.0)

    sink = Ordered()
    await asyncio.wait_for(Renderer(sink).consume(events()), 10)
    log = sink.log
    assert log[0] == "stage:answer" and log.index("stage:review") > max(log.index(f"post:{t}") for t in "abc")
    assert log.index("post:r") > log.index("stage:review")


async def test_a_cancelled_discussion_stops_writing_within_its_grace() -> None:
    """Shutdown must not wait for budget: a platform that grants nothing more is left
    after the grace period, with the messages still open for restart recovery."""

    class Starved(RecordingSink):
        def __init__(self) -> None:
            super().__init__(limit=10_000)
            self.post_budget = self.edit_budget = TokenBucket(0.0, 1)  # one write, then nothing

    sink = Starved()
    r = Renderer(sink, grace=0.3)

    async def events() -> AsyncIterator[Event]:
        for tid in ("a", "b"):
            yield TurnStarted(info(tid))
        while True:
            yield TextDelta("a", "more ")
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(r.consume(events()))
    await asyncio.sleep(0.2)
    t0 = asyncio.get_running_loop().time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.get_running_loop().time() - t0 < 2.0  # grace 0.3 s, not "until budget comes"
    assert all(v.task is not None and v.task.done() for v in r.views.values())
    assert len(sink.order) == 1  # the one write the budget allowed
