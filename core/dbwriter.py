"""SQLite connections for the store: one writer thread, reads where they are asked.

Writes never run on the event loop: another process holding the write lock
(a second replica, ``parley usage`` in a shell) makes the writer wait, not
every stream. They are queued in order to one thread with its own
connection; :meth:`Writer.submit` returns at once, :meth:`Writer.call` waits
for a result (start-up and tests), :meth:`Writer.settled` lets async code wait
without blocking the loop. Between writes the thread beats the process's
heartbeat (see :mod:`core.store`), so a process is alive exactly as long as it
can write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlite_utils

from core.errors import redact
from core.sql import PgDatabase, is_postgres

log = logging.getLogger("parley.store")

Write = Callable[[sqlite_utils.Database], Any]


def connect(path: Path | str, *, busy_ms: int) -> Any:
    """A connection to the store: for SQLite, in WAL mode with a busy timeout set before
    anything else touches the file; for a ``postgresql://`` URL, :class:`core.sql.PgDatabase`
    (the same API)."""
    if is_postgres(path):
        return PgDatabase(str(path), timeout=busy_ms / 1000)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=busy_ms / 1000)
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    db = sqlite_utils.Database(conn)
    if str(path) != ":memory:":
        # WAL lets readers go on while one process writes; NORMAL: durable across
        # application crashes without an fsync per commit.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    # Deleted text (retention, /forget) is overwritten, not left in free space.
    conn.execute("PRAGMA secure_delete = ON")
    return db


def _transient(e: Exception) -> bool:
    """An error that trying the same write again can cure."""
    if isinstance(e, sqlite3.OperationalError):
        return "locked" in str(e) or "busy" in str(e)
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(e, (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
                          psycopg.errors.LockNotAvailable, psycopg.OperationalError))


class Writer:
    """One thread that performs every write, in order, on its own connection."""

    def __init__(
        self,
        path: Path | str,
        *,
        tick: float,
        on_tick: Write | None = None,
        busy_ms: int = 10_000,
    ) -> None:
        self.path = path
        self.tick = tick
        self.on_tick = on_tick
        self.busy_ms = busy_ms
        self.failures = 0
        # (priority, order, item): urgent writes (a budget reservation before an acknowledgement)
        # go ahead of queued stream writes; each priority keeps its order.
        self._queue: queue.PriorityQueue[
            tuple[int, int, tuple[Write, concurrent.futures.Future[Any] | None] | None]
        ] = queue.PriorityQueue()
        self._order = itertools.count()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="parley-db-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        self._db: Any = connect(self.path, busy_ms=self.busy_ms)
        beat_at = time.monotonic()
        try:
            while True:
                # The heartbeat is due every ``tick`` seconds, however busy the queue is.
                now = time.monotonic()
                if self.on_tick is not None and now - beat_at >= self.tick:
                    beat_at = now
                    self._do(self._db, self.on_tick, None, counted=False)
                try:
                    _, _, item = self._queue.get(timeout=max(0.0, beat_at + self.tick - time.monotonic()))
                except queue.Empty:
                    continue
                if item is None:
                    return
                self._do(self._db, *item, counted=True)
        finally:
            self._db.conn.close()

    def _do(
        self, db: sqlite_utils.Database, fn: Write, fut: concurrent.futures.Future[Any] | None, *, counted: bool
    ) -> None:
        try:
            if fut is not None and not fut.set_running_or_notify_cancel():
                return  # its caller gave up before it ran (a cancelled request): nothing to do
            try:
                with db.conn:
                    result = fn(db)
            except Exception as e:
                if not _transient(e):
                    raise
                if isinstance(db, PgDatabase) and db.conn.closed:  # the server went away: reconnect
                    db.conn.close()
                    self._db = db = connect(self.path, busy_ms=self.busy_ms)
                with db.conn:  # a lock held for a whole timeout, a deadlock, a lost connection: once more
                    result = fn(db)
        except Exception as e:
            if fut is not None:
                fut.set_exception(e)
            else:
                self.failures += 1
                log.warning("a store write failed: %s", redact(repr(e)))
        else:
            if fut is not None:
                fut.set_result(result)
        finally:
            if counted:
                with self._lock:
                    self._pending -= 1

    # --- submitting ---------------------------------------------------------------------
    def _put(self, fn: Write, fut: concurrent.futures.Future[Any] | None, *, urgent: bool = False) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")
        self._start()
        with self._lock:
            self._pending += 1
        self._queue.put((0 if urgent else 1, next(self._order), (fn, fut)))

    def submit(self, fn: Write, *, urgent: bool = False) -> None:
        """Queue a write; failures are logged (redacted), never raised to the caller."""
        self._put(fn, None, urgent=urgent)

    def call(self, fn: Write) -> Any:
        """Queue a write and wait for its result (raises what it raised)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put(fn, fut)
        return fut.result()

    async def acall(self, fn: Write, *, urgent: bool = False) -> Any:
        """:meth:`call` without blocking the event loop; ``urgent`` goes ahead of queued writes
        (for what a person is waiting on, such as a budget check before an acknowledgement)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put(fn, fut, urgent=urgent)
        return await asyncio.wrap_future(fut)

    @property
    def pending(self) -> int:
        """Writes queued and not yet done."""
        with self._lock:
            return self._pending

    @property
    def alive(self) -> bool:
        """The thread is running, or will start with the first write (not closed, not dead)."""
        return not self._closed and (self._thread is None or self._thread.is_alive())

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._pending == 0

    def flush(self) -> None:
        """Block until every write queued so far is done."""
        if not self.idle:
            self.call(lambda db: None)

    async def settled(self) -> None:
        """Wait, without blocking the event loop, until every write queued so far is done."""
        if self.idle:
            return
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put(lambda db: None, fut)
        await asyncio.wrap_future(fut)

    def close(self) -> None:
        """Finish the queued writes, then stop the thread."""
        if self._closed:
            return
        if self._thread is not None:
            self._queue.put((2, next(self._order), None))
            self._thread.join(timeout=self.busy_ms / 1000 + 5)
        self._closed = True
