"""Run ownership between replicas, on both dialects: who is alive, and who takes over what a
dead replica left (its running discussions, its open messages), exactly once.

Replicas are Stores on one database; a replica on another machine, or one that died, is an
``instances`` row written as that process would have left it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from core import ledger
from core.store import HOST, Store, process_start


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "s.db")
    return str(request.getfixturevalue("pg_url"))


def ghost(store: Store, *, id: str, host: str = "elsewhere", pid: int = 4242, age: float = 0.0,
          boot: str | None = None) -> None:
    """An instance row as another process left it: its last heartbeat ``age`` seconds ago."""
    row = {"id": id, "host": host, "pid": pid, "started_at": "2026-01-01T00:00:00+00:00",
           "heartbeat": time.time() - age, "boot": boot}
    store.writer.call(lambda db: db.table("instances").insert(row))


def run_of(store: Store, owner: str, *, front_end: str = "slack", posts: int = 1) -> tuple[str, list[int]]:
    """A running discussion owned by ``owner`` with ``posts`` open messages, as its owner wrote them."""
    did = store.start_discussion(mode="single", command="ask", prompt="p", options={}, conversation=None,
                                 front_end=front_end)
    ids = [store.record_post(did, None, front_end, "C1:1.0", json.dumps({"channel": "C1", "ts": f"{i}.5"}))
           for i in range(posts)]
    for i, pid in enumerate(ids):
        store.update_post_text(pid, f"shown {i}")
    store.writer.call(lambda db: db.execute("update discussions set owner = ? where id = ?", [owner, did]))
    return did, ids


def test_liveness_is_a_fresh_heartbeat_and_on_this_host_the_same_process(target: str) -> None:
    store = Store(target, lease=6)
    try:
        me = process_start(os.getpid())
        assert me is not None and process_start(os.getpid()) == me  # stable for a process
        ghost(store, id="remote-fresh", age=1)
        ghost(store, id="remote-stale", age=5.5)  # beyond five sixths of the lease
        ghost(store, id="here-exited", host=HOST, pid=2**22 + 12345, age=0)  # no such pid
        # A restarted container: same hostname, same pid, started anew.
        ghost(store, id="here-pid-reused", host=HOST, pid=os.getpid(), age=0, boot="another-boot:1")
        ghost(store, id="here-same", host=HOST, pid=os.getpid(), age=0, boot=me)
        assert store.live_owners() == {store.instance_id, "remote-fresh", "here-same"}
        [row] = store.peek("select boot from instances where id = ?", [store.instance_id])
        assert row["boot"] == me
    finally:
        store.close()


async def test_a_dead_replicas_runs_and_messages_are_taken_over_once(target: str) -> None:
    a, b = Store(target, lease=6), Store(target, lease=6)
    try:
        ghost(a, id="dead", age=60)
        ghost(a, id="alive", age=0)
        dead_run, dead_posts = run_of(a, "dead", posts=2)
        live_run, live_posts = run_of(a, "alive")
        other_fe, _ = run_of(a, "dead", front_end="discord")
        a.flush()
        got = await a.take_over("slack")
        assert sorted(p["id"] for p in got) == sorted(dead_posts)
        assert {p["discussion_status"] for p in got} == {"interrupted"}
        assert sorted(p["text"] for p in got) == ["shown 0", "shown 1"]  # what each message showed
        assert await b.take_over("slack") == []  # claimed by a: b leaves them
        assert a.discussion(dead_run)["status"] == "interrupted"
        assert a.discussion(live_run)["status"] == "running"  # a live replica's run is untouched
        assert a.discussion(other_fe)["status"] == "running"  # another front-end's, for its own kind
        assert [p["id"] for p in a.open_posts("slack") if p["discussion_id"] == live_run] == live_posts
    finally:
        b.close()
        a.close()


async def test_a_message_claimed_by_a_replica_that_then_died_is_claimed_again(target: str) -> None:
    a = Store(target, lease=6)
    b = Store(target, lease=6)
    try:
        ghost(a, id="dead", age=60)
        _, posts = run_of(a, "dead")
        a.flush()
        assert [p["id"] for p in await a.take_over("slack")] == posts
        assert await b.take_over("slack") == []
        a.close()  # died before editing and closing it
        assert [p["id"] for p in await b.take_over("slack")] == posts
    finally:
        b.close()
        a.close()


async def test_survivors_taking_over_at_the_same_time_split_the_work_without_overlap(target: str) -> None:
    stores = [Store(target, lease=6) for _ in range(4)]
    holder = stores[0].reader()
    try:
        for n in range(3):
            ghost(stores[0], id=f"dead{n}", age=60)
        expected = sorted(p for n in range(3) for p in run_of(stores[0], f"dead{n}", posts=5)[1])
        # Already marked, by a survivor that died before editing them: only the claims are left.
        stores[0].writer.call(lambda db: db.execute("update discussions set status = 'interrupted'"))
        stores[0].writer.call(lambda db: db.execute("update posts set claimer = 'dead0'"))
        # Another writer holds the write lock (and the rows) while all four survivors look: each
        # must wait for it and then see what the one before it claimed, not claim from a stale read.
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("update posts set text = text")
        work = asyncio.gather(*(s.take_over("slack") for s in stores))
        await asyncio.sleep(0.5)
        holder.commit()
        got = await work
        ids = [p["id"] for batch in got for p in batch]
        assert sorted(ids) == expected  # every message once, none twice
    finally:
        holder.close()
        for s in stores:
            s.close()


async def test_instances_silent_for_ten_leases_are_forgotten_and_a_stalled_one_rejoins(target: str) -> None:
    store = Store(target, lease=1)
    try:
        ghost(store, id="long-gone", age=11)
        ghost(store, id="recent", age=3)
        await store.take_over("slack")
        ids = {r["id"] for r in store.peek("select id from instances")}
        assert ids == {store.instance_id, "recent"}
        # This process was taken for dead and pruned (a stall longer than the lease): its next
        # heartbeat puts it back.
        store.writer.call(lambda db: db.execute("delete from instances where id = ?", [store.instance_id]))
        for _ in range(50):
            if store.peek("select id from instances where id = ?", [store.instance_id]):
                break
            await asyncio.sleep(0.05)
        assert store.peek("select id from instances where id = ?", [store.instance_id])
    finally:
        store.close()


async def test_the_watch_takes_over_a_replica_that_dies_while_this_one_runs(target: str) -> None:
    store = Store(target, lease=1.2)  # looks every 0.2 s
    marked: list[tuple[dict[str, Any], str]] = []

    async def mark(ref: dict[str, Any], shown: str) -> None:
        marked.append((ref, shown))

    settled: list[int] = []
    watcher = asyncio.create_task(ledger.watch(store, "slack", mark, also=lambda: settled.append(1)))
    try:
        ghost(store, id="replica", age=0)
        did, posts = run_of(store, "replica")
        store.flush()
        await asyncio.sleep(0.5)
        assert marked == [] and store.discussion(did)["status"] == "running"  # alive: left alone
        # The replica dies: its heartbeat stops.
        for _ in range(60):
            if marked:
                break
            await asyncio.sleep(0.05)
        assert marked == [({"channel": "C1", "ts": "0.5"}, "shown 0")]
        assert store.discussion(did)["status"] == "interrupted"
        await store.settled()
        assert store.open_posts("slack") == []
        assert settled  # the dead replica's budget reservations are settled as well
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        store.close()
