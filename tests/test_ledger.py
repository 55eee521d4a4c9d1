"""The post ledger, driven by the renderer: open messages in the store, budget claims,
and bookkeeping failures that never reach the platform-retry path."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.budget import TokenBucket, WindowBudget
from core.events import Event, TextDelta, TurnFinished, TurnStarted, TurnUsage
from core.ledger import Ledger, recover
from core.render import Renderer
from core.sink import Frame, MessageClosed, Undeliverable
from core.store import Store
from tests.test_render import RecordingSink, events_for, info, prose


class RecordedSink(RecordingSink):
    """A sink whose messages restart recovery can find again, with a claimable budget."""

    front_end = "test"
    destination = "chan"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.post_budget = self.edit_budget = WindowBudget(10_000, 1.0, paced=False)
        self.stream_budget = WindowBudget(10_000, 1.0, paced=False)
        self.streams: set[int] = set()  # refs whose final op comes from stream_budget

    def record(self, ref: int) -> dict[str, Any]:
        return {"message": ref, **({"kind": "stream"} if ref in self.streams else {})}

    def shown(self, ref: int) -> str:
        return self.messages[ref].text

    def final_budget(self, ref: int) -> TokenBucket:
        return self.stream_budget if ref in self.streams else self.edit_budget


@pytest.fixture
def store(store_target: str) -> Store:
    s = Store(store_target)
    yield s
    s.close()


def discussion(store: Store, front_end: str = "test") -> str:
    return store.start_discussion(
        mode="parallel", command="compare", prompt="q", options={}, conversation=None, front_end=front_end
    )


async def test_a_failed_ledger_write_never_posts_twice(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: Any, **kw: Any) -> int:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "record_post", broken)
    monkeypatch.setattr(store, "update_post_text", broken)
    sink = RecordedSink(limit=10_000)
    ledger = Ledger(store, discussion(store), sink)
    texts = {"a": prose(80, 1), "b": prose(80, 2)}
    r = Renderer(sink, ledger=ledger)
    await asyncio.wait_for(r.consume(events_for(texts, chunk=9, delay=0.001)), 10)
    posts = [c for c, _ in sink.calls if c == "post"]
    assert len(posts) == 2  # exactly one message per turn, though every record failed
    assert ledger.failures >= 2 and r.lost_ops == 0
    for tid, text in texts.items():
        assert sink.turn_text(tid) == text


async def test_open_messages_are_recorded_with_what_they_show_and_closed_at_the_end(store: Store) -> None:
    did = discussion(store)
    sink = RecordedSink(limit=10_000, min_interval=0.0)
    ledger = Ledger(store, did, sink, save_every=0)
    r = Renderer(sink, ledger=ledger)
    seen: list[list[dict[str, Any]]] = []
    real = store.update_post_text

    def spy(post_id: int, text: str) -> None:
        real(post_id, text)
        seen.append(store.posts(did))

    store.update_post_text = spy  # type: ignore[method-assign]
    await r.consume(events_for({"a": prose(60, 3)}, chunk=5, delay=0.001))
    assert seen, "a streaming message records what it shows"
    mid = seen[-1]
    assert len(mid) == 1 and mid[0]["discussion_id"] == did and mid[0]["destination"] == "chan"
    assert mid[0]["text"] and prose(60, 3).startswith(mid[0]["text"].rstrip())
    assert store.posts(did) == []  # finished: nothing left for a restart to mark
    assert sink.post_budget.claims == 0


async def test_what_a_message_shows_is_saved_on_a_timer_not_at_every_edit(store: Store) -> None:
    """Streaming edits many times a second must not write the database as often; the
    last text still gets saved once the stream pauses."""
    did = discussion(store)
    sink = RecordedSink(limit=10_000)
    saves: list[str] = []
    real = store.update_post_text

    def spy(post_id: int, text: str) -> None:
        saves.append(text)
        real(post_id, text)

    store.update_post_text = spy  # type: ignore[method-assign]
    ledger = Ledger(store, did, sink, save_every=0.2)
    r = Renderer(sink, ledger=ledger)

    async def events() -> AsyncIterator[Event]:
        text = prose(200, 7)
        yield TurnStarted(info("a"))
        for i in range(0, 600, 6):
            yield TextDelta("a", text[i : i + 6])
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)  # the stream pauses: the latest text is saved
        assert saves and saves[-1] == sink.shown(0)
        yield TurnFinished(info("a"), text[:600], TurnUsage(), 1.0, 2.0)

    await asyncio.wait_for(r.consume(events()), 10)
    edits = sum(1 for c, _ in sink.calls if c == "edit")
    assert edits > 20 and len(saves) <= 6  # ~0.5 s of streaming at one save per 0.2 s, plus the pause
    assert store.posts(did) == []


async def test_claims_follow_the_message_and_are_released_on_every_ending() -> None:
    class Closing(RecordedSink):
        """The first message's edits move it to the stream budget, then it expires."""

        edits = 0

        async def edit(self, ref: int, frame: Frame) -> None:
            self.edits += 1
            if self.edits == 2:
                self.streams.add(ref)  # like a Slack stream that became a posted message
            if self.edits == 4 and frame.state == "streaming":
                raise MessageClosed()
            await super().edit(ref, frame)

    sink = Closing(limit=10_000)
    claims: list[tuple[int, int]] = []
    real_edit = sink.edit

    async def watch(ref: int, frame: Frame) -> None:
        claims.append((sink.edit_budget.claims, sink.stream_budget.claims))
        await real_edit(ref, frame)

    sink.edit = watch  # type: ignore[method-assign]
    r = Renderer(sink)
    await asyncio.wait_for(r.consume(events_for({"a": prose(120, 4)}, chunk=3, delay=0.002)), 10)
    assert (1, 0) in claims and (0, 1) in claims  # the claim moved with the message's final budget
    assert sink.edit_budget.claims == 0 and sink.stream_budget.claims == 0
    assert sink.turn_text("a") == prose(120, 4)  # the rest continued in a new message


async def test_a_message_that_changes_kind_is_recorded_as_it_is_now(store: Store) -> None:
    class Converting(RecordedSink):
        edits = 0

        async def edit(self, ref: int, frame: Frame) -> None:
            self.edits += 1
            if self.edits == 2:
                self.streams.add(ref)
            await super().edit(ref, frame)

    sink = Converting(limit=10_000)
    refs: list[str] = []
    real = store.update_post_text

    def spy(post_id: int, text: str) -> None:
        real(post_id, text)
        refs.extend(p["ref"] for p in store.posts(did))

    store.update_post_text = spy  # type: ignore[method-assign]
    did = discussion(store)
    r = Renderer(sink, ledger=Ledger(store, did, sink, save_every=0))
    await asyncio.wait_for(r.consume(events_for({"a": prose(80, 6)}, chunk=3, delay=0.002)), 10)
    assert refs[0] == '{"message": 0}' and refs[-1] == '{"message": 0, "kind": "stream"}'


async def test_an_undeliverable_turn_releases_its_claims_and_closes_its_posts(store: Store) -> None:
    class Refusing(RecordedSink):
        async def edit(self, ref: int, frame: Frame) -> None:
            raise Undeliverable("channel archived")

    sink = Refusing(limit=10_000)
    did = discussion(store)
    r = Renderer(sink, ledger=Ledger(store, did, sink))
    await asyncio.wait_for(r.consume(events_for({"a": prose(40, 5)}, chunk=4, delay=0.001)), 10)
    assert r.lost_ops == 1 and sink.post_budget.claims == 0
    assert store.posts(did) == []


async def test_recover_marks_only_orphaned_posts_of_this_front_end_and_survives_a_failing_one(
    store: Store, store_target: str
) -> None:
    gone = Store(store_target)  # a process that has since exited
    did = discussion(gone)
    other = discussion(gone, front_end="elsewhere")
    for i in range(3):
        pid = gone.record_post(did, f"t{i}", "test", "chan", f'{{"message": {i}}}')
        gone.update_post_text(pid, f"shown {i}")
    gone.record_post(other, "x", "elsewhere", "chan", '{"message": 9}')
    gone.close()
    live = discussion(store)  # this process's discussion, still streaming
    store.record_post(live, "y", "test", "chan", '{"message": 7}')
    marked: list[tuple[dict[str, Any], str]] = []

    async def mark(ref: dict[str, Any], shown: str) -> None:
        if ref["message"] == 1:
            raise RuntimeError("message deleted")
        marked.append((ref, shown))

    n = await recover(store, "test", mark)
    assert n == 2 and sorted(m[0]["message"] for m in marked) == [0, 2]
    assert dict((r["message"], t) for r, t in marked) == {0: "shown 0", 2: "shown 2"}
    assert store.posts(did) == []
    assert len(store.posts(other)) == 1 and len(store.posts(live)) == 1  # not ours to touch
    assert store.discussion(did)["status"] == "interrupted"
    assert store.discussion(other)["status"] == "running"
    assert store.discussion(live)["status"] == "running"
