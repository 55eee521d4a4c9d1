"""The post ledger, driven by the renderer: open messages in the store, budget claims,
and bookkeeping failures that never reach the platform-retry path."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from core.budget import TokenBucket, WindowBudget
from core.ledger import Ledger, recover
from core.render import Renderer
from core.sink import Frame, MessageClosed, Undeliverable
from core.store import Store
from tests.test_render import RecordingSink, events_for, prose


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
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "ledger.db")
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
    ledger = Ledger(store, did, sink)
    r = Renderer(sink, ledger=ledger)
    seen: list[list[dict[str, Any]]] = []
    real = store.update_post_text

    def spy(post_id: int, text: str) -> None:
        real(post_id, text)
        seen.append(store.open_posts("test"))

    store.update_post_text = spy  # type: ignore[method-assign]
    await r.consume(events_for({"a": prose(60, 3)}, chunk=5, delay=0.001))
    assert seen, "a streaming message records what it shows"
    mid = seen[-1]
    assert len(mid) == 1 and mid[0]["discussion_id"] == did and mid[0]["destination"] == "chan"
    assert mid[0]["text"] and prose(60, 3).startswith(mid[0]["text"].rstrip())
    assert store.open_posts("test") == []  # finished: nothing left for a restart to mark
    assert sink.post_budget.claims == 0


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
        refs.extend(p["ref"] for p in store.open_posts("test"))

    store.update_post_text = spy  # type: ignore[method-assign]
    r = Renderer(sink, ledger=Ledger(store, discussion(store), sink))
    await asyncio.wait_for(r.consume(events_for({"a": prose(80, 6)}, chunk=3, delay=0.002)), 10)
    assert refs[0] == '{"message": 0}' and refs[-1] == '{"message": 0, "kind": "stream"}'


async def test_an_undeliverable_turn_releases_its_claims_and_closes_its_posts(store: Store) -> None:
    class Refusing(RecordedSink):
        async def edit(self, ref: int, frame: Frame) -> None:
            raise Undeliverable("channel archived")

    sink = Refusing(limit=10_000)
    r = Renderer(sink, ledger=Ledger(store, discussion(store), sink))
    await asyncio.wait_for(r.consume(events_for({"a": prose(40, 5)}, chunk=4, delay=0.001)), 10)
    assert r.lost_ops == 1 and sink.post_budget.claims == 0
    assert store.open_posts("test") == []


async def test_recover_marks_only_this_front_ends_open_posts_and_survives_a_failing_one(store: Store) -> None:
    did = discussion(store)
    other = discussion(store, front_end="elsewhere")
    for i in range(3):
        pid = store.record_post(did, f"t{i}", "test", "chan", f'{{"message": {i}}}')
        store.update_post_text(pid, f"shown {i}")
    store.record_post(other, "x", "elsewhere", "chan", '{"message": 9}')
    marked: list[tuple[dict[str, Any], str]] = []

    async def mark(ref: dict[str, Any], shown: str) -> None:
        if ref["message"] == 1:
            raise RuntimeError("message deleted")
        marked.append((ref, shown))

    n = await recover(store, "test", mark)
    assert n == 2 and marked == [({"message": 0}, "shown 0"), ({"message": 2}, "shown 2")]
    assert store.open_posts("test") == []
    assert len(store.open_posts("elsewhere")) == 1
    assert store.discussion(did)["status"] == "interrupted"
    assert store.discussion(other)["status"] == "running"
