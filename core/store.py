"""The only door to SQLite.

Writes go to one writer thread (:mod:`core.dbwriter`) in order and return at
once, so nothing on the event loop waits for the database lock; reads run on
the caller's connection and first wait for this process's own queued writes
(read-your-writes). WAL mode lets other processes read while one writes.

Every process that opens the store is an *instance* with a heartbeat; each
discussion records its owner. Restart recovery touches only discussions (and
their open platform messages) whose owner is gone: its heartbeat is older than
the lease, or its process no longer exists on this host. Several processes can
share one database without stopping each other's live work.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlite_utils

from core.dbwriter import Writer, connect
from core.errors import ErrorKind, redact
from core.events import ErrorInfo, TurnInfo, TurnUsage
from core.migrations import MIGRATIONS
from core.records import HealthMark, PastDiscussion, PastTurn, new_id, now_iso
from core.sql import PgConnection, describe, is_postgres

HOST = socket.gethostname()
log = logging.getLogger("parley.store")
INTERRUPTED = "Interrupted: Parley restarted while this discussion was running. Ask again to rerun it."


def rows_of(conn: sqlite3.Connection, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
    cur = conn.execute(sql, list(args))
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as ``boot id:start tick`` (Linux's /proc), or None where
    that cannot be read. A process that later gets the same pid (a restarted container is
    pid 1 again, on the same hostname) has another start, so it is not taken for the old one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ticks = stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime (the name may hold spaces)
    except (OSError, IndexError):
        return None
    return f"{boot}:{ticks}"


#: What share of the lease a heartbeat may be late before its process counts as gone, and how
#: often survivors look: a dead process's runs are taken over within one lease of its last beat.
STALE_SHARE, CHECK_SHARE = 5 / 6, 1 / 6


class Store:
    """``target`` is a SQLite file (the embedded default) or a ``postgresql://`` URL
    (:mod:`core.sql`: the same statements and migrations on PostgreSQL)."""

    def __init__(self, target: Path | str, *, lease: float = 30.0) -> None:
        if str(target) == ":memory:":
            raise ValueError("the store needs a file (several connections share it)")
        self.dialect = "postgres" if is_postgres(target) else "sqlite"
        if self.dialect == "sqlite":
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self.path: Path | str = Path(target)
        else:
            self.path = str(target)
        self.lease = lease
        self._db = connect(self.path, busy_ms=5_000)
        self.migrate()
        #: This process, as the owner of the discussions it starts.
        self.instance_id = uuid.uuid4().hex[:16]
        self.boot = process_start(os.getpid())
        self.writer = Writer(self.path, tick=max(0.05, lease / 3), on_tick=self._beat)
        self.writer.call(self._enter)

    # --- schema -------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply what is missing, all or nothing, under one write lock: processes starting
        together on a fresh database wait for one another instead of failing with
        "database is locked", and a migration that fails leaves no half-made schema."""
        db = self._db
        conn = db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Raw statements only: sqlite-utils' insert() commits, which would end the
            # transaction after the first migration.
            conn.execute("create table if not exists _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
            done = {r[0] for r in conn.execute("select name from _migrations")}
            applied = []
            for fn in MIGRATIONS:
                if fn.__name__ in done:
                    continue
                fn(db)
                conn.execute("insert into _migrations (name, applied_at) values (?, ?)", [fn.__name__, now_iso()])
                applied.append(fn.__name__)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return applied

    def close(self) -> None:
        """Finish queued writes, leave the instance table (this process's runs are no
        longer owned by anyone alive) and close both connections."""
        if self.writer._closed:
            return
        self.writer.submit(lambda db: db.execute("delete from instances where id = ?", [self.instance_id]))
        self.writer.close()
        self._db.conn.close()

    # --- the write queue ------------------------------------------------------------
    def _write(self, fn: Any) -> None:
        self.writer.submit(fn)

    def flush(self) -> None:
        """Block until this process's queued writes are in the database."""
        self.writer.flush()

    async def settled(self) -> None:
        """Wait (without blocking the loop) until this process's queued writes are in."""
        await self.writer.settled()

    def _read(self) -> sqlite_utils.Database:
        self.writer.flush()
        return self._db

    def peek(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Rows as committed now, without waiting for this process's queued writes: for
        the checks before an acknowledgement, whose data is written synchronously."""
        return rows_of(self._db.conn, sql, args)

    def reader(self) -> Any:
        """A connection of its own, for reading on another thread (close it when done)."""
        if self.dialect == "postgres":
            return PgConnection(str(self.path), timeout=5.0)
        return sqlite3.connect(str(self.path), timeout=5.0, check_same_thread=False)

    @property
    def where(self) -> str:
        """Where the data is, for logs and messages (a URL without its password)."""
        return describe(self.path)

    @property
    def db(self) -> sqlite_utils.Database:
        """The read connection, after this process's queued writes (for inspection and tests)."""
        return self._read()

    # --- instances: who owns what ------------------------------------------------------
    def _enter(self, db: sqlite_utils.Database) -> None:
        row = {"id": self.instance_id, "host": HOST, "pid": os.getpid(), "started_at": now_iso(),
               "heartbeat": time.time(), "boot": self.boot}
        db.table("instances").insert(row)

    def _beat(self, db: sqlite_utils.Database) -> None:
        cur = db.execute("update instances set heartbeat = ? where id = ?", [time.time(), self.instance_id])
        if cur.rowcount == 0:
            # Taken for dead (stalled longer than the lease, or cut off from the database) and
            # pruned: its runs were handed over; it is alive again for what it starts next.
            log.warning("this process's heartbeat was missed for longer than the lease; it rejoins")
            self._enter(db)

    @property
    def check_every(self) -> float:
        """How often a survivor looks for dead processes' runs (:meth:`take_over`)."""
        return self.lease * CHECK_SHARE

    def _live(self, rows: Iterable[dict[str, Any]]) -> set[str]:
        cutoff = time.time() - self.lease * STALE_SHARE
        live = {self.instance_id}
        for r in rows:
            if r["id"] == self.instance_id or r["heartbeat"] is None or r["heartbeat"] < cutoff:
                continue
            if r["host"] == HOST:  # on this host, a process that has exited is gone at once
                pid = int(r["pid"] or 0)
                if not _pid_alive(pid):
                    continue
                started = process_start(pid)
                if r.get("boot") and started and started != r["boot"]:
                    continue  # its pid now belongs to another process
            live.add(r["id"])
        return live

    def live_owners(self, db: sqlite_utils.Database | None = None) -> set[str]:
        """Instances whose heartbeat is fresh and whose process, on this host, still exists
        (``db``: read on that connection, inside its transaction)."""
        conn = (db or self._read()).conn
        return self._live(rows_of(conn, "select id, host, pid, heartbeat, boot from instances"))

    # --- discussions ----------------------------------------------------------
    def start_discussion(
        self,
        *,
        mode: str,
        command: str,
        prompt: str,
        options: dict[str, Any],
        conversation: str | None,
        front_end: str,
        discussion_id: str | None = None,
        where: tuple[str, str, str] | None = None,
    ) -> str:
        """``where`` is (workspace, channel, user): who asked, for budgets, retention and /forget."""
        did = discussion_id or new_id()
        workspace, channel, user = where or (None, None, None)
        row = {
            "id": did,
            "conversation": conversation,
            "mode": mode,
            "command": command,
            "prompt": prompt,
            "options": json.dumps(options),
            "status": "running",
            "front_end": front_end,
            "owner": self.instance_id,
            "created_at": now_iso(),
            "workspace": workspace,
            "channel": channel,
            "user": user,
        }
        self._write(lambda db: db.table("discussions").insert(row))
        return did

    def finish_discussion(self, did: str, status: str, cost_usd: float, message: str | None = None) -> None:
        row = {
            "status": status,
            "cost_usd": cost_usd,
            "message": redact(message) if message else None,
            "finished_at": now_iso(),
        }
        self._write(lambda db: db.table("discussions").update(did, row))

    def discussion(self, did: str) -> dict[str, Any]:
        return dict(self._read().table("discussions").get(did))

    def _interrupt(self, db: sqlite_utils.Database, front_ends: list[str], live: set[str]) -> list[str]:
        """In the caller's write transaction: mark interrupted the running discussions of
        ``front_ends`` whose owner is not in ``live``, with their running turns."""
        marks = ",".join("?" * len(front_ends))
        rows = rows_of(db.conn, f"select id, owner from discussions where status = 'running' and front_end in ({marks})",
                       front_ends)
        ids = [r["id"] for r in rows if r["owner"] not in live]
        if not ids:
            return []
        idm = ",".join("?" * len(ids))
        at = now_iso()
        db.execute(
            "update turns set status='failed', error_kind=?, error_message=?, finished_at=? "
            f"where status='running' and discussion_id in ({idm})",
            [str(ErrorKind.INTERRUPTED), INTERRUPTED, at, *ids],
        )
        db.execute(
            f"update discussions set status='interrupted', message=?, finished_at=? "
            f"where status='running' and id in ({idm})",
            [INTERRUPTED, at, *ids],
        )
        return ids

    def mark_interrupted(self, front_ends: Iterable[str]) -> list[str]:
        """Discussions of ``front_ends`` still 'running' whose owner is gone were cut off (a
        restart, a crash, kill -9): mark them interrupted. A discussion another live process
        owns is never touched, whatever front-end it belongs to."""
        fe = list(front_ends)
        if not fe:
            return []

        def fn(db: sqlite_utils.Database) -> list[str]:
            db.conn.execute("BEGIN IMMEDIATE")
            return self._interrupt(db, fe, self.live_owners(db))

        return list(self.writer.call(fn))

    async def take_over(self, front_end: str) -> list[dict[str, Any]]:
        """What dead processes of ``front_end`` left, claimed by this one in one write
        transaction, so that two survivors never both take the same run: their running
        discussions are marked interrupted, and their open messages are returned (each with
        its ``discussion_status``) for this process to edit and then :meth:`close_posts`.
        A message claimed by a process that died while editing it is claimed again.
        Instances silent for ten leases are forgotten."""

        def fn(db: sqlite_utils.Database) -> list[dict[str, Any]]:
            db.conn.execute("BEGIN IMMEDIATE")
            live = self.live_owners(db)
            self._interrupt(db, [front_end], live)
            rows = rows_of(
                db.conn,
                "select p.*, d.status as discussion_status, d.owner as owner from posts p "
                "left join discussions d on d.id = p.discussion_id where p.front_end = ? and p.open = 1",
                [front_end],
            )
            others = live - {self.instance_id}
            mine = [r for r in rows if r.pop("owner") not in live and r.pop("claimer") not in others]
            if mine:
                db.execute(f"update posts set claimer = ? where id in ({','.join('?' * len(mine))})",
                           [self.instance_id, *(r["id"] for r in mine)])
            db.execute("delete from instances where heartbeat < ?", [time.time() - 10 * self.lease])
            return mine

        return list(await self.writer.acall(fn))

    # --- stopping ---------------------------------------------------------------------
    async def request_stop(self, workspace: str, channel: str, user: str | None) -> list[str]:
        """Ask the running discussions held in ``channel`` of ``workspace`` (``user``'s; None:
        anyone's) to stop, whichever process runs them. Returns their ids. The request is kept
        on the discussion, so an owner that missed the message still finds it
        (:meth:`stop_requests`)."""
        where = "status = 'running' and workspace = ? and channel = ?" + (" and user = ?" if user else "")
        args = [workspace, channel, *([user] if user else [])]

        def fn(db: sqlite_utils.Database) -> list[str]:
            ids = [r["id"] for r in rows_of(db.conn, f"select id from discussions where {where}", args)]
            if ids:
                db.execute(f"update discussions set stop_requested = ? where id in ({','.join('?' * len(ids))})",
                           [now_iso(), *ids])
            return ids

        return list(await self.writer.acall(fn, urgent=True))

    async def stop_requests(self) -> list[str]:
        """This process's running discussions that someone asked to stop."""

        def fn(db: sqlite_utils.Database) -> list[str]:
            return [r["id"] for r in rows_of(
                db.conn, "select id from discussions where owner = ? and status = 'running' "
                "and stop_requested is not null", [self.instance_id])]

        return list(await self.writer.acall(fn))

    # --- turns ------------------------------------------------------------------
    def start_turn(self, did: str, seq: int, turn: TurnInfo, prompt: str) -> None:
        row = {
                "id": turn.turn_id,
                "discussion_id": did,
                "seq": seq,
                "stage": turn.stage,
                "round": turn.round,
                "persona": turn.persona_id,
                "provider": turn.provider,
                "model": turn.model,
                "prompt": prompt,
                "status": "running",
                "started_at": now_iso(),
            }
        self._write(lambda db: db.table("turns").insert(row))

    def finish_turn(
        self,
        turn_id: str,
        *,
        status: str,
        text: str,
        usage: TurnUsage,
        ttft_ms: float | None,
        latency_ms: float,
        reasoning_chars: int = 0,
        error: ErrorInfo | None = None,
        finish_reason: str | None = None,
    ) -> None:
        row = {
                "finish_reason": finish_reason,
                "status": status,
                "text": text,
                "reasoning_chars": reasoning_chars,
                "error_kind": error.kind if error else None,
                "error_message": redact(error.message) if error else None,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cached_tokens": usage.cached_tokens,
                "usage_estimated": int(usage.estimated),
                "cost_usd": usage.cost_usd,
                "ttft_ms": ttft_ms,
                "latency_ms": latency_ms,
                "finished_at": now_iso(),
            }
        self._write(lambda db: db.table("turns").update(turn_id, row))

    def turn(self, turn_id: str) -> dict[str, Any] | None:
        rows = list(self._read().table("turns").rows_where("id = ?", [turn_id]))
        return rows[0] if rows else None

    def turns(self, did: str) -> list[dict[str, Any]]:
        return list(self._read().table("turns").rows_where("discussion_id = ?", [did], order_by="seq"))

    # --- conversations (follow-ups) ---------------------------------------------
    def has_conversation(self, conversation: str) -> bool:
        """Whether any discussion belongs to this conversation (a thread Parley answered in)."""
        return bool(self.peek("select 1 from discussions where conversation = ? limit 1", [conversation]))

    def history(self, conversation: str, limit: int = 20) -> list[PastDiscussion]:
        """Earlier discussions of a conversation, oldest first, with their finished turns."""
        return self._history(self._read(), conversation, limit)

    async def ahistory(self, conversation: str, limit: int = 20) -> list[PastDiscussion]:
        """:meth:`history` read on the writer's thread, after this process's queued writes
        (the conversation's earlier turns are in), without blocking the event loop."""
        return list(await self.writer.acall(lambda db: self._history(db, conversation, limit)))

    @staticmethod
    def _history(db: sqlite_utils.Database, conversation: str, limit: int) -> list[PastDiscussion]:
        rows = list(
            db.query(
                "select id, mode, prompt from discussions where conversation = ? "
                "order by created_at desc limit ?",
                [conversation, limit],
            )
        )
        out = []
        for r in reversed(rows):
            turns = [
                PastTurn(t["persona"], t["provider"], t["model"], t["stage"], t["text"] or "")
                for t in db.query(
                    "select persona, provider, model, stage, text from turns "
                    "where discussion_id = ? and status = 'finished' order by seq",
                    [r["id"]],
                )
            ]
            out.append(PastDiscussion(r["id"], r["mode"], r["prompt"], turns))
        return out

    # --- usage -----------------------------------------------------------------------
    def usage_summary(self) -> list[dict[str, Any]]:
        return list(
            self._read().query(
                "select provider, model, count(*) as turns, "
                "sum(case when status = 'failed' then 1 else 0 end) as failed, "
                "coalesce(sum(input_tokens), 0) as input_tokens, "
                "coalesce(sum(output_tokens), 0) as output_tokens, "
                "coalesce(sum(cached_tokens), 0) as cached_tokens, "
                "coalesce(sum(usage_estimated), 0) as estimated_turns, "
                "round(cast(coalesce(sum(cost_usd), 0) as numeric), 6) as cost_usd "
                "from turns group by provider, model order by cost_usd desc, provider, model"
            )
        )

    # --- provider health -----------------------------------------------------------
    def set_health(
        self, provider: str, status: str, message: str, until: float, fingerprint: str | None = None
    ) -> None:
        row = {
            "provider": provider,
            "status": status,
            "message": redact(message),
            "until": until,
            "fingerprint": fingerprint,
            "updated_at": now_iso(),
        }
        self._write(lambda db: db.table("provider_health").upsert(row, pk="provider"))

    def health_marks(self) -> dict[str, HealthMark]:
        now = time.time()
        return {
            r["provider"]: HealthMark(r["status"], r["message"], r["until"], r["fingerprint"])
            for r in self._read().table("provider_health").rows_where("until > ?", [now])
        }

    def clear_health(self, provider: str) -> None:
        self._write(lambda db: db.execute("delete from provider_health where provider = ?", [provider]))

    # --- platform posts ----------------------------------------------------------------
    def record_post(
        self, discussion_id: str, turn_id: str | None, front_end: str, destination: str, ref: str
    ) -> int:
        """Remember an open platform message; returns its id at once (chosen here, so the
        write can be queued)."""
        post_id = secrets.randbits(62)
        row = {
            "id": post_id,
            "discussion_id": discussion_id,
            "turn_id": turn_id,
            "front_end": front_end,
            "destination": destination,
            "ref": ref,
            "open": 1,
            "created_at": now_iso(),
        }
        self._write(lambda db: db.table("posts").insert(row))
        return post_id

    def close_posts(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            self._write(lambda db: db.execute(f"update posts set open = 0 where id in ({','.join('?' * len(ids))})", ids))

    def update_post_text(self, post_id: int, text: str) -> None:
        """Remember what an open platform message shows now (for the restart note)."""
        shown = redact(text)
        self._write(lambda db: db.execute("update posts set text = ? where id = ?", [shown, post_id]))

    def update_post_ref(self, post_id: int, ref: str) -> None:
        """How to find an open platform message changed (a stream became a plain message)."""
        self._write(lambda db: db.execute("update posts set ref = ? where id = ?", [ref, post_id]))

    def posts(self, discussion_id: str, *, open_only: bool = True) -> list[dict[str, Any]]:
        """The platform messages recorded for one discussion (open ones by default)."""
        where = "discussion_id = ?" + (" and open = 1" if open_only else "")
        return list(self._read().table("posts").rows_where(where, [discussion_id], order_by="created_at"))

    def open_posts(self, front_end: str) -> list[dict[str, Any]]:
        """Open messages of ``front_end`` (for inspection and tests: :meth:`take_over` claims them)."""
        return list(self._read().table("posts").rows_where("front_end = ? and open = 1", [front_end]))

    # --- small facts kept across restarts ------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = list(self._read().query("select value from meta where key = ?", [key]))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        row = {"key": key, "value": value, "updated_at": now_iso()}
        self._write(lambda db: db.table("meta").upsert(row, pk="key"))
