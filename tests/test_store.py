"""The store's writer thread and instance ownership, on both dialects (``store_target``)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from core.store import HOST, Store


# SQLite only: about SQLite's file-wide write lock held by another process.
def test_writes_never_wait_for_another_processs_lock(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    other = sqlite3.connect(tmp_path / "s.db", timeout=10, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process is writing, for a while
    release = threading.Timer(1.5, other.commit)
    release.start()
    try:
        t0 = time.monotonic()
        did = store.start_discussion(mode="single", command="ask", prompt="q", options={}, conversation=None,
                                     front_end="cli")
        for i in range(20):
            store.update_post_text(store.record_post(did, None, "cli", "x", "{}"), f"text {i}")
        store.finish_discussion(did, "finished", 0.5)
        queued = time.monotonic() - t0
    finally:
        release.join()
        other.close()
    assert queued < 0.5  # the calls queue; the lock holds for 1.5 s (a generous margin)
    assert store.discussion(did)["status"] == "finished"  # a read waits for this process's own writes
    assert len(store.posts(did)) == 20
    store.close()


def test_the_heartbeat_beats_however_busy_the_writer_is(store_target: str) -> None:
    store = Store(store_target, lease=0.3)  # a beat every 0.1 s
    first = store.db.execute("select heartbeat from instances where id = ?", [store.instance_id]).fetchone()[0]
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # never idle for a whole beat interval
        for _ in range(100):
            store.set_meta("k", str(time.monotonic()))
        time.sleep(0.03)
    last = store.db.execute("select heartbeat from instances where id = ?", [store.instance_id]).fetchone()[0]
    assert last - first >= 0.5
    assert store.instance_id in store.live_owners()
    store.close()


def test_an_owner_is_gone_when_its_heartbeat_is_stale_or_its_process_is_gone(store_target: str) -> None:
    store = Store(store_target, lease=30)
    now = time.time()
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    rows = [
        {"id": "stale", "host": "elsewhere", "pid": 1, "started_at": "", "heartbeat": now - 60},
        {"id": "remote", "host": "elsewhere", "pid": dead_pid, "started_at": "", "heartbeat": now},
        {"id": "dead-here", "host": HOST, "pid": dead_pid, "started_at": "", "heartbeat": now},
    ]
    store.writer.call(lambda db: db.table("instances").insert_all(rows))
    assert store.live_owners() == {store.instance_id, "remote"}  # another host's pid is not checkable here
    store.close()
    again = Store(store_target)
    assert store.instance_id not in again.live_owners()  # a closed store leaves the table
    again.close()


async def test_a_write_whose_caller_gave_up_does_not_stop_the_writer(store_target: str) -> None:
    """A request cancelled while waiting for its write (shutdown, a client gone) must not
    kill the writer thread: later writes still happen."""
    import asyncio

    store = Store(store_target)
    try:
        gate = threading.Event()
        store.writer.submit(lambda db: gate.wait(5))  # the writer is busy
        waiting = asyncio.ensure_future(store.writer.acall(lambda db: db.execute("create table t (x text)")))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.sleep(0.05)  # the cancellation reaches the queued write
        gate.set()
        store.writer.call(lambda db: db.execute("create table u (x text)"))
        names = set(store.db.table_names())
        assert "u" in names and "t" not in names  # the abandoned write was skipped, the writer lives
    finally:
        store.close()


def test_named_parameters_work_on_both_dialects(store_target: str) -> None:
    """sqlite3's ``:name`` style with a dict: the reserved ``user`` column as a parameter, and a
    ``:`` inside a string literal left alone."""
    from core.sql import translate

    sql = "insert into t (k, user, at) values (:k, :user, '10:30') on conflict(k) do update set user = excluded.user"
    assert translate(sql, True, True) == (
        'insert into t (k, "user", at) values (%(k)s, %(user)s, \'10:30\') '
        'on conflict(k) do update set "user" = excluded."user"'
    )
    store = Store(store_target)
    try:
        def fn(db: Any) -> None:
            db.execute("create table t (k text primary key, [user] text, at text)")
            for who in ("ann", "bob"):
                db.conn.execute(sql, {"k": "a", "user": who})

        store.writer.call(fn)
        assert store.peek("select k, user, at from t") == [{"k": "a", "user": "bob", "at": "10:30"}]
    finally:
        store.close()
