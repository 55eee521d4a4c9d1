"""The storage side of governance, on the store's own connections (one door to SQLite).

Reads on the path before an acknowledgement use :meth:`core.store.Store.peek`
(what is committed, without waiting for queued turn writes); every change is a
synchronous write on the writer thread, so it is committed when the command
answers. A reservation is one ``BEGIN IMMEDIATE`` transaction: the check of every
cap and the spend it adds are atomic across processes sharing the database.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from core.errors import redact
from core.governance.policy import Rule
from core.governance.scope import Periods
from core.records import new_id, now_iso
from core.store import Store, rows_of

log = logging.getLogger("parley.governance")

#: A spend row's amount: its reservation while running, its cost once settled.
AMOUNT = "case status when 'reserved' then estimate_usd else actual_usd end"


@dataclass(frozen=True, slots=True)
class Cap:
    scope: str  # workspace | channel | user
    target: str  # '' (workspace), a channel id, a user id or '*' (every user without their own)
    daily: float | None
    monthly: float | None
    soft_pct: int
    updated_by: str = ""

    def limit(self, period: str) -> float | None:
        return self.daily if period == "daily" else self.monthly


@dataclass(frozen=True, slots=True)
class Over:
    """A cap the reservation would exceed."""

    cap: Cap
    period: str
    spent: float
    limit: float

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.spent)


@dataclass(frozen=True, slots=True)
class Alert:
    """A soft threshold crossed for the first time this period."""

    cap: Cap
    period: str
    spent: float
    limit: float


def upsert(db: sqlite_utils.Database, table: str, row: dict[str, Any], pk: str | tuple[str, ...]) -> None:
    """Insert or update one row in the caller's transaction (sqlite-utils' own upsert
    commits, which would split a change from its audit row)."""
    keys = (pk,) if isinstance(pk, str) else pk
    cols = list(row)
    rest = [c for c in cols if c not in keys]
    db.conn.execute(
        f"insert into {table} ({', '.join(cols)}) values ({', '.join('?' * len(cols))}) "
        f"on conflict({', '.join(keys)}) do "
        + (f"update set {', '.join(f'{c} = excluded.{c}' for c in rest)}" if rest else "nothing"),
        [row[c] for c in cols],
    )


def _keys(workspace: str, channel: str, user: str, periods: Periods) -> list[tuple[str, str, str, str]]:
    """The running totals one spend row adds to: each scope × each period."""
    out = []
    for scope, target in (("workspace", ""), ("channel", channel), ("user", user)):
        if scope == "channel" and not channel:
            continue
        for period in ("daily", "monthly"):
            out.append((workspace, scope, target, periods.key(period)))
    return out


#: ``reserve(version=…)`` not given: reserve whatever the workspace's version.
ANY_VERSION: Any = object()

Write = Callable[[sqlite_utils.Database], Any]


class Stale(Exception):
    """The workspace's governance changed after the checks the reservation relied on."""


@dataclass(eq=False, slots=True)
class _Reservation:
    sid: str
    workspace: str
    channel: str
    user: str
    caps: list[Cap]
    estimate: float
    free: list[str]
    periods: Periods
    version: str | None | object
    done: asyncio.Future[tuple[str | None, list[Over], list[Alert]]]

    def target_of(self, cap: Cap) -> str:
        return self.user if cap.scope == "user" else cap.target


class _Batch:
    """The write of one flush (on the writer thread): takes what is queued when it first runs;
    run again on a transient error (the writer retries once), it does the same again."""

    def __init__(self, store: GovernanceStore) -> None:
        self.store = store
        self.items: list[_Reservation | Write] | None = None
        self.results: dict[_Reservation, Any] = {}

    def __call__(self, db: sqlite_utils.Database) -> None:
        if self.items is None:
            self.items = self.store._take()
        self.results = {}
        self.results = self.store._apply(db, self.items)

    def reservations(self) -> list[_Reservation]:
        return [i for i in self.items or [] if isinstance(i, _Reservation)]


#: Running totals read per statement (each a workspace, a scope and a target).
_TOTALS_PER_READ = 200


def _read_totals(db: sqlite_utils.Database, items: list[_Reservation]) -> dict[tuple[str, str, str, str], float]:
    """The running totals the caps of ``items`` are checked against, and only those: a
    workspace with 10,000 people does not read 10,000 people's totals for one request."""
    wanted: dict[tuple[str, str, str], None] = {}
    periods: dict[str, None] = {}
    for item in items:
        for cap in item.caps:
            wanted[(item.workspace, cap.scope, item.target_of(cap))] = None
            for period in ("daily", "monthly"):
                if cap.limit(period) is not None:
                    periods[item.periods.key(period)] = None
    out: dict[tuple[str, str, str, str], float] = {}
    if not wanted or not periods:
        return out
    keys = list(wanted)
    marks = ", ".join("?" * len(periods))
    for at in range(0, len(keys), _TOTALS_PER_READ):
        chunk = keys[at : at + _TOTALS_PER_READ]
        where = " or ".join("(workspace = ? and scope = ? and target = ?)" for _ in chunk)
        args = [v for k in chunk for v in k]
        for r in db.conn.execute(
            f"select workspace, scope, target, period, usd from spend_totals where period in ({marks}) and ({where})",
            [*periods, *args],
        ):
            out[(r[0], r[1], r[2], r[3])] = r[4]
    # Keys read and found empty count as 0 from here on (and are added to in memory).
    for workspace, scope, target in keys:
        for period in periods:
            out.setdefault((workspace, scope, target, period), 0.0)
    return out


class GovernanceStore:
    def __init__(self, store: Store, peek: Callable[..., list[dict[str, Any]]] | None = None) -> None:
        self.store = store
        #: How reads are made: the store's connection, or another thread's (:meth:`on`).
        self.peek = peek or store.peek
        # Reservations (and the settlements behind them) waiting for the writer thread; whether
        # a flush will take them. Shared by the event loop and the writer thread, under the lock.
        self._lock = threading.Lock()
        self._queued: collections.deque[_Reservation | Write] = collections.deque()
        self._scheduled = False
        self._flushes: set[asyncio.Future[None]] = set()

    def on(self, conn: sqlite3.Connection) -> GovernanceStore:
        """The same reads on ``conn`` (a connection of another thread)."""
        return GovernanceStore(self.store, lambda sql, args=(): rows_of(conn, sql, args))

    # --- versions: one counter per workspace, bumped by every change -------------------
    def version(self, workspace: str) -> str | None:
        rows = self.peek("select value from meta where key = ?", [f"gov:{workspace}"])
        return rows[0]["value"] if rows else None

    @staticmethod
    def _bump(db: sqlite_utils.Database, workspace: str) -> None:
        db.execute(
            "insert into meta (key, value, updated_at) values (?, ?, ?) "
            "on conflict(key) do update set value = excluded.value, updated_at = excluded.updated_at",
            [f"gov:{workspace}", secrets.token_hex(8), now_iso()],
        )

    @staticmethod
    def _audit(db: sqlite_utils.Database, workspace: str, actor: str, action: str, target: str,
               before: Any, after: Any) -> None:
        db.execute(
            "insert into audit (workspace, actor, action, target, before, after, at) values (?, ?, ?, ?, ?, ?, ?)",
            [workspace, actor, action, target, json.dumps(before), json.dumps(after), now_iso()],
        )

    async def change(self, workspace: str, actor: str, action: str, target: str, fn: Any) -> Any:
        """Run ``fn(db) -> (before, after, result)`` with its audit row and a version bump, atomically."""

        def write(db: sqlite_utils.Database) -> Any:
            before, after, result = fn(db)
            self._audit(db, workspace, actor, action, target, before, after)
            self._bump(db, workspace)
            return result

        return await self.store.writer.acall(write, urgent=True)

    def audit_log(self, workspace: str, limit: int = 20) -> list[dict[str, Any]]:
        return self.peek(
            "select * from audit where workspace = ? order by id desc limit ?", [workspace, limit]
        )

    def admin_ids(self, workspace: str) -> list[str]:
        """People the platform called admins here, and who changed budgets or policy here (only admins can)."""
        rows = self.peek(
            "select user as actor from admins_seen where workspace = ? union "
            "select distinct actor from audit where workspace = ? and (action like 'budget%' or action like 'policy%')",
            [workspace, workspace],
        )
        return sorted(r["actor"] for r in rows if r["actor"] and r["actor"] != "policy-file")

    def saw_admin(self, workspace: str, user: str) -> None:
        row = {"workspace": workspace, "user": user, "seen_at": now_iso()}
        self.store.writer.submit(lambda db: upsert(db, "admins_seen", row, ("workspace", "user")))

    # --- what the checks read ---------------------------------------------------------------
    def rules(self, workspace: str) -> list[Rule]:
        return [
            Rule(r["id"], r["workspace"], r["channel"] or "", r["effect"], r["dimension"], r["pattern"],
                 tuple(s for s in (r["subjects"] or "").split(",") if s), r["created_by"] or "", r["created_at"] or "")
            for r in self.peek("select * from policy_rules where workspace = ? order by id", [workspace])
        ]

    def defaults(self, workspace: str) -> dict[str, dict[str, Any]]:
        return {
            r["channel"] or "": {
                "providers": json.loads(r["providers"] or "[]"),
                "personas": json.loads(r["personas"] or "[]"),
                "mode": r["mode"] or None,
            }
            for r in self.peek("select * from channel_defaults where workspace = ?", [workspace])
        }

    def settings(self, workspace: str) -> dict[str, Any]:
        rows = self.peek("select * from workspace_settings where workspace = ?", [workspace])
        row = rows[0] if rows else {}
        return {
            "followups": bool(row.get("followups") or 0),
            "retention_days": row.get("retention_days") or 0,
            "own_keys_count": bool(row.get("own_keys_count", 1) if row.get("own_keys_count") is not None else 1),
            "swept_at": row.get("swept_at"),
        }

    def caps(self, workspace: str) -> list[Cap]:
        return [
            Cap(r["scope"], r["target"] or "", r["daily_usd"], r["monthly_usd"], r["soft_pct"] or 80,
                r["updated_by"] or "")
            for r in self.peek("select * from budgets where workspace = ?", [workspace])
        ]

    def totals(self, workspace: str, scope: str, target: str, periods: Periods) -> dict[str, float]:
        rows = self.peek(
            "select period, usd from spend_totals where workspace = ? and scope = ? and target = ? "
            "and period in (?, ?)",
            [workspace, scope, target, periods.day, periods.month],
        )
        got = {r["period"]: r["usd"] for r in rows}
        return {"daily": got.get(periods.day, 0.0), "monthly": got.get(periods.month, 0.0)}

    # --- policy changes ---------------------------------------------------------------------
    async def add_rules(self, workspace: str, actor: str, rules: list[dict[str, Any]]) -> list[int]:
        def fn(db: sqlite_utils.Database) -> tuple[Any, Any, list[int]]:
            ids = []
            for r in rules:
                cur = db.execute(
                    "insert into policy_rules (workspace, channel, effect, dimension, pattern, subjects, "
                    "created_by, created_at) values (?, ?, ?, ?, ?, ?, ?, ?) returning id",
                    [workspace, r["channel"], r["effect"], r["dimension"], r["pattern"], ",".join(r["subjects"]),
                     actor, now_iso()],
                )
                ids.append(int(cur.fetchone()[0]))
            return None, [{**r, "id": i} for r, i in zip(rules, ids, strict=True)], ids

        return list(await self.change(workspace, actor, "policy.add", "rules", fn))

    async def remove_rule(self, workspace: str, actor: str, rule_id: int) -> dict[str, Any] | None:
        def fn(db: sqlite_utils.Database) -> tuple[Any, Any, dict[str, Any] | None]:
            rows = list(db.query("select * from policy_rules where workspace = ? and id = ?", [workspace, rule_id]))
            if rows:
                db.execute("delete from policy_rules where id = ?", [rule_id])
            return (rows[0] if rows else None), None, (rows[0] if rows else None)

        return await self.change(workspace, actor, "policy.remove", f"rule #{rule_id}", fn)  # type: ignore[no-any-return]

    async def set_defaults(self, workspace: str, actor: str, channel: str, values: dict[str, Any]) -> None:
        def fn(db: sqlite_utils.Database) -> tuple[Any, Any, None]:
            old = list(db.query("select providers, personas, mode from channel_defaults where workspace = ? "
                                "and channel = ?", [workspace, channel]))
            upsert(db, "channel_defaults", 
                {"workspace": workspace, "channel": channel, "providers": json.dumps(values.get("providers") or []),
                 "personas": json.dumps(values.get("personas") or []), "mode": values.get("mode"),
                 "updated_by": actor, "updated_at": now_iso()}, ("workspace", "channel"),)
            return (old[0] if old else None), values, None

        await self.change(workspace, actor, "policy.default", channel or "workspace", fn)

    async def set_setting(self, workspace: str, actor: str, action: str, **values: Any) -> None:
        def fn(db: sqlite_utils.Database) -> tuple[Any, Any, None]:
            old = list(db.query("select * from workspace_settings where workspace = ?", [workspace]))
            upsert(db, "workspace_settings", 
                {"workspace": workspace, **values, "updated_by": actor, "updated_at": now_iso()}, "workspace")
            before = {k: old[0].get(k) for k in values} if old else None
            return before, values, None

        await self.change(workspace, actor, action, "workspace", fn)

    # --- budgets ------------------------------------------------------------------------------
    async def set_cap(self, workspace: str, actor: str, cap: Cap) -> None:
        def fn(db: sqlite_utils.Database) -> tuple[Any, Any, None]:
            old = list(db.query("select daily_usd, monthly_usd, soft_pct from budgets where workspace = ? and "
                                "scope = ? and target = ?", [workspace, cap.scope, cap.target]))
            row = {"workspace": workspace, "scope": cap.scope, "target": cap.target, "daily_usd": cap.daily,
                   "monthly_usd": cap.monthly, "soft_pct": cap.soft_pct, "updated_by": actor,
                   "updated_at": now_iso()}
            upsert(db, "budgets", row, ("workspace", "scope", "target"))
            after = {"daily_usd": cap.daily, "monthly_usd": cap.monthly, "soft_pct": cap.soft_pct}
            return (old[0] if old else None), after, None

        await self.change(workspace, actor, "budget.set", f"{cap.scope}:{cap.target or '-'}", fn)

    async def reserve(
        self,
        *,
        workspace: str,
        channel: str,
        user: str,
        caps: list[Cap],
        estimate: float,
        free: list[str],
        periods: Periods,
        version: str | None | object = ANY_VERSION,
    ) -> tuple[str | None, list[Over], list[Alert]]:
        """Check every cap and add the reservation, in one write transaction.

        Returns (spend id, [], alerts) when it fits, or (None, the caps it would exceed, []).
        With ``version`` (the workspace's governance version the caps and checks were read at),
        raises :class:`Stale` instead, reserving nothing, if the workspace changed since: the
        caller reads it again and checks again.

        Reservations waiting together share one transaction (:class:`_Batch`): a burst of
        requests costs one write lock, one read of the running totals and one commit, not one
        of each per request; each is still checked against the totals the ones before it left."""
        item = _Reservation(new_id(), workspace, channel, user, caps, estimate, free, periods, version,
                            asyncio.get_running_loop().create_future())
        with self._lock:
            self._queued.append(item)
            start = not self._scheduled
            self._scheduled = True
        if start:
            self._flushes.add(task := asyncio.ensure_future(self._flush()))
            task.add_done_callback(self._flushes.discard)
        try:
            return await item.done
        except asyncio.CancelledError:
            # The request was cancelled while its reservation was being made: give it back
            # (after the reservation, in the same order, if it was made).
            self.settle(item.sid, 0.0, estimated=False)
            raise

    async def _flush(self) -> None:
        """One transaction for every reservation (and every settlement queued behind them) that
        is waiting when the writer thread gets to it."""
        batch = _Batch(self)
        try:
            await self.store.writer.acall(batch, urgent=True)
        except BaseException as e:
            if batch.items is None:  # it never ran (the store closed, the loop is ending): nothing waits for it
                batch.items = self._take()
            failed = e if isinstance(e, Exception) else RuntimeError("the reservation was interrupted")
            for item in batch.reservations():
                if not item.done.done():
                    item.done.set_exception(failed)
            if len(batch.reservations()) < len(batch.items):
                log.warning("settling %d reservation(s) failed: %s", len(batch.items) - len(batch.reservations()),
                            redact(repr(e)))
            if not isinstance(e, Exception):
                raise
            return
        for item, result in batch.results.items():
            if item.done.done():
                continue
            if isinstance(result, Exception):
                item.done.set_exception(result)
            else:
                item.done.set_result(result)

    def _take(self) -> list[_Reservation | Write]:
        """On the writer thread: what is queued, and from now on a new flush for what comes."""
        with self._lock:
            self._scheduled = False
            taken = list(self._queued)
            self._queued.clear()
        return taken

    def _after_reservations(self, fn: Write) -> None:
        """A write that must see the reservations queued before it (a settlement, a discussion's
        id): in their transaction if they are still waiting, else straight to the writer."""
        with self._lock:
            if self._scheduled:
                self._queued.append(fn)
                return
        self.store.writer.submit(fn, urgent=True)

    def _apply(self, db: sqlite_utils.Database, items: list[_Reservation | Write]) -> dict[_Reservation, Any]:
        """The batch's transaction: each reservation in order, against the running totals as the
        ones before it left them."""
        db.conn.execute("BEGIN IMMEDIATE")
        out: dict[_Reservation, Any] = {}
        versions: dict[str, str | None] = {}
        totals: dict[tuple[str, str, str, str], float] | None = None
        spend_rows: list[list[Any]] = []
        added: dict[tuple[str, str, str, str], float] = {}

        def write_pending() -> None:
            if spend_rows:
                db.conn.executemany(
                    "insert into spend (id, workspace, channel, user, estimate_usd, actual_usd, estimated, "
                    "counted, status, owner, day, month, created_at, free) values (?, ?, ?, ?, ?, 0, 0, 1, "
                    "'reserved', ?, ?, ?, ?, ?)", spend_rows)
                spend_rows.clear()
            if added:
                db.conn.executemany(
                    "insert into spend_totals (workspace, scope, target, period, usd) values (?, ?, ?, ?, ?) "
                    "on conflict(workspace, scope, target, period) do update set usd = spend_totals.usd + "
                    "excluded.usd", [(*k, usd) for k, usd in added.items()])
                added.clear()

        reservations = [i for i in items if isinstance(i, _Reservation)]
        for workspace in {i.workspace for i in reservations if i.version is not ANY_VERSION}:
            row = db.conn.execute("select value from meta where key = ?", [f"gov:{workspace}"]).fetchone()
            versions[workspace] = row[0] if row else None
        owner = self.store.instance_id
        for i, item in enumerate(items):
            if not isinstance(item, _Reservation):
                write_pending()
                item(db)  # a settlement: the totals it changed are read again for what follows
                totals = None
                continue
            if item.version is not ANY_VERSION and versions[item.workspace] != item.version:
                out[item] = Stale()
                continue
            if totals is None:
                totals = _read_totals(db, [r for r in items[i:] if isinstance(r, _Reservation)])
            over: list[Over] = []
            near: list[Alert] = []
            for cap in item.caps:
                for period in ("daily", "monthly"):
                    limit = cap.limit(period)
                    if limit is None:
                        continue
                    spent = totals.get((item.workspace, cap.scope, item.target_of(cap), item.periods.key(period)), 0.0)
                    if spent + item.estimate > limit + 1e-12:
                        over.append(Over(cap, period, spent, limit))
                    elif spent + item.estimate >= limit * cap.soft_pct / 100:
                        near.append(Alert(cap, period, spent + item.estimate, limit))
            if over:
                out[item] = (None, over, [])
                continue
            spend_rows.append([item.sid, item.workspace, item.channel, item.user, item.estimate, owner,
                               item.periods.day, item.periods.month, now_iso(), ",".join(item.free)])
            for key in _keys(item.workspace, item.channel, item.user, item.periods):
                added[key] = added.get(key, 0.0) + item.estimate
                if key in totals:
                    totals[key] += item.estimate
            alerts = []
            for a in near:
                cur = db.conn.execute(
                    "insert or ignore into alerts (workspace, scope, target, period, sent_at) values (?, ?, ?, ?, ?)",
                    [item.workspace, a.cap.scope, item.target_of(a.cap), item.periods.key(a.period), now_iso()],
                )
                if cur.rowcount == 1:
                    alerts.append(a)
            out[item] = (item.sid, [], alerts)
        write_pending()
        return out

    @staticmethod
    def _add(db: sqlite_utils.Database, keys: list[tuple[str, str, str, str]], usd: float) -> None:
        db.conn.executemany(
            "insert into spend_totals (workspace, scope, target, period, usd) values (?, ?, ?, ?, ?) "
            "on conflict(workspace, scope, target, period) do update set usd = spend_totals.usd + excluded.usd",
            [(*k, usd) for k in keys],
        )

    def _settle(self, db: sqlite_utils.Database, sid: str, actual: float, estimated: bool) -> None:
        rows = list(db.conn.execute(
            "select workspace, channel, user, estimate_usd, day, month, status from spend where id = ?", [sid]))
        if not rows or rows[0][6] != "reserved":
            return
        workspace, channel, user, estimate, day, month, _ = rows[0]
        periods = Periods(day, month, None, None)  # type: ignore[arg-type]
        self._add(db, _keys(workspace, channel or "", user or "", periods), actual - estimate)
        db.conn.execute(
            "update spend set status = 'settled', actual_usd = ?, estimated = ?, settled_at = ? where id = ?",
            [actual, int(estimated), now_iso(), sid],
        )

    def settle(self, sid: str, actual: float, *, estimated: bool, discussion_id: str | None = None) -> None:
        """Replace a reservation by what was spent (queued: it never holds up a reply)."""

        def fn(db: sqlite_utils.Database) -> None:
            if discussion_id:
                db.conn.execute("update spend set discussion_id = ? where id = ?", [discussion_id, sid])
            self._settle(db, sid, actual, estimated)

        # In the reservations' lane: a later reservation must see the budget this one gives back.
        self._after_reservations(fn)

    def attach(self, sid: str, discussion_id: str) -> None:
        self._after_reservations(
            lambda db: db.conn.execute("update spend set discussion_id = ? where id = ?", [discussion_id, sid])
        )

    def settle_orphans(self) -> int:
        """Reservations whose process is gone (so is its discussion, whatever its row says):
        settle each at what its turns cost (the free providers named at reservation left out).
        A live process's reservations are never touched."""
        live = self.store.live_owners()
        rows = self.store.db.execute(
            "select s.id, s.owner, s.discussion_id, s.free, d.status from spend s "
            "left join discussions d on d.id = s.discussion_id where s.status = 'reserved'"
        ).fetchall()
        orphans = [(sid, did, free) for sid, owner, did, free, _status in rows if owner not in live]
        if not orphans:
            return 0

        def fn(db: sqlite_utils.Database) -> None:
            for sid, did, free in orphans:
                skip = [p for p in (free or "").split(",") if p]
                marks = ",".join("?" * len(skip))
                where = f" and provider not in ({marks})" if skip else ""
                cost = db.conn.execute(
                    f"select coalesce(sum(cost_usd), 0), coalesce(max(usage_estimated), 0) from turns "
                    f"where discussion_id = ?{where}", [did, *skip]
                ).fetchone() if did else (0.0, 0)
                self._settle(db, sid, float(cost[0]), bool(cost[1]))

        self.store.writer.call(fn)
        return len(orphans)

    def spend_rows(self, workspace: str, month: str) -> list[dict[str, Any]]:
        return self.peek(
            f"select channel, user, {AMOUNT} as usd, status, estimated from spend where workspace = ? and month = ?",
            [workspace, month],
        )

    def provider_spend(self, workspace: str, month: str) -> list[dict[str, Any]]:
        return self.peek(
            "select t.provider as provider, t.model as model, count(*) as turns, "
            "round(cast(coalesce(sum(t.cost_usd), 0) as numeric), 6) as cost_usd, coalesce(sum(t.usage_estimated), 0) as estimated "
            "from turns t join discussions d on d.id = t.discussion_id "
            "where d.workspace = ? and substr(d.created_at, 1, 7) = ? group by t.provider, t.model "
            "order by cost_usd desc",
            [workspace, month],
        )

    # --- own keys ------------------------------------------------------------------------------
    def key_owners(self, workspace: str) -> list[str]:
        """Who has an own key stored in ``workspace`` ('' for the workspace's own)."""
        return [r["user"] or "" for r in self.peek(
            "select distinct user from provider_keys where workspace = ?", [workspace])]

    def key_rows(self, workspace: str, users: list[str]) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(users))
        return self.peek(
            f"select * from provider_keys where workspace = ? and user in ({marks})", [workspace, *users]
        )

    async def set_key(self, workspace: str, actor: str, user: str, provider: str, ciphertext: str,
                      key_id: str, last4: str) -> None:
        def fn(db: sqlite_utils.Database) -> tuple[Any, Any, None]:
            upsert(db, "provider_keys", 
                {"workspace": workspace, "user": user, "provider": provider, "ciphertext": ciphertext,
                 "key_id": key_id, "last4": last4, "set_by": actor, "set_at": now_iso()}, ("workspace", "user", "provider"),)
            return None, {"provider": provider, "last4": last4, "for": user or "workspace"}, None

        await self.change(workspace, actor, "keys.set", f"{provider}:{user or 'workspace'}", fn)

    async def delete_key(self, workspace: str, actor: str, user: str, provider: str) -> bool:
        def fn(db: sqlite_utils.Database) -> tuple[Any, Any, bool]:
            cur = db.conn.execute(
                "delete from provider_keys where workspace = ? and user = ? and provider = ?",
                [workspace, user, provider],
            )
            return {"provider": provider, "for": user or "workspace"}, None, cur.rowcount > 0

        return bool(await self.change(workspace, actor, "keys.delete", f"{provider}:{user or 'workspace'}", fn))

    # --- saved panels ---------------------------------------------------------------------------
    def panels(self, workspace: str) -> list[dict[str, Any]]:
        return [
            {**r, "options": json.loads(r["options"] or "{}")}
            for r in self.peek("select * from panels where workspace = ? order by name", [workspace])
        ]

    def panel(self, workspace: str, name: str) -> dict[str, Any] | None:
        rows = self.peek("select * from panels where workspace = ? and name = ?", [workspace, name])
        return {**rows[0], "options": json.loads(rows[0]["options"] or "{}")} if rows else None

    async def save_panel(self, workspace: str, actor: str, name: str, options: dict[str, Any]) -> None:
        def fn(db: sqlite_utils.Database) -> tuple[Any, Any, None]:
            old = list(db.query("select options, created_by, created_at from panels where workspace = ? and name = ?",
                                [workspace, name]))
            now = now_iso()
            upsert(db, "panels", 
                {"workspace": workspace, "name": name, "options": json.dumps(options),
                 "created_by": old[0]["created_by"] if old else actor, "created_at": old[0]["created_at"] if old
                 else now, "updated_by": actor, "updated_at": now}, ("workspace", "name"),)
            return (json.loads(old[0]["options"]) if old else None), options, None

        await self.change(workspace, actor, "panel.save", name, fn)

    async def delete_panel(self, workspace: str, actor: str, name: str) -> None:
        def fn(db: sqlite_utils.Database) -> tuple[Any, Any, None]:
            old = list(db.query("select options from panels where workspace = ? and name = ?", [workspace, name]))
            db.conn.execute("delete from panels where workspace = ? and name = ?", [workspace, name])
            return (json.loads(old[0]["options"]) if old else None), None, None

        await self.change(workspace, actor, "panel.delete", name, fn)

    # --- retention and /forget ------------------------------------------------------------------
    @staticmethod
    def _erase(db: sqlite_utils.Database, where: str, args: list[Any]) -> int:
        """Blank the texts of the discussions matching ``where`` (costs and tokens stay)."""
        ids = [r[0] for r in db.conn.execute(f"select id from discussions where {where}", args)]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            db.conn.execute(f"update turns set prompt = NULL, text = NULL where discussion_id in ({marks})", chunk)
            db.conn.execute(f"update posts set text = NULL where discussion_id in ({marks})", chunk)
            db.conn.execute(
                f"update discussions set prompt = NULL, options = NULL, text_erased_at = ? where id in ({marks})",
                [now_iso(), *chunk],
            )
        return len(ids)

    async def purge(self, workspace: str, cutoff_iso: str) -> int:
        """Erase texts of this workspace's discussions created before ``cutoff_iso``, then
        checkpoint so that nothing of them is left in the WAL either."""

        def fn(db: sqlite_utils.Database) -> int:
            n = self._erase(
                db, "workspace = ? and created_at < ? and status != 'running' and text_erased_at is null",
                [workspace, cutoff_iso],
            )
            db.conn.execute(
                "update workspace_settings set swept_at = ? where workspace = ?", [now_iso(), workspace]
            )
            return n

        n: int = await self.store.writer.acall(fn)
        await self.checkpoint()
        return n

    async def forget(self, workspace: str, user: str) -> int:
        def fn(db: sqlite_utils.Database) -> int:
            n = self._erase(db, "workspace = ? and user = ? and status != 'running'", [workspace, user])
            self._audit(db, workspace, user, "forget", user, None, {"discussions": n})
            return n

        n: int = await self.store.writer.acall(fn)
        await self.checkpoint()
        return n

    async def checkpoint(self, attempts: int = 5) -> bool:
        """Copy the WAL into the database and truncate it: erased text leaves no old copies.
        Another process reading holds the WAL; try a few times, then say so (the next sweep
        tries again). Returns whether it was truncated."""
        if self.store.dialect == "postgres":
            # No WAL file of ours: VACUUM makes the erased rows' space reusable (it cannot
            # run in a transaction, so on a connection of its own).
            def vacuum() -> None:
                conn = self.store.reader()
                try:
                    conn.execute("vacuum turns, posts, discussions")
                finally:
                    conn.close()

            await self.store.settled()
            await asyncio.to_thread(vacuum)
            return True
        for attempt in range(attempts):
            busy = await self.store.writer.acall(
                lambda db: db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            )
            if not busy:
                return True
            await asyncio.sleep(0.1 * 2**attempt)
        log.warning("the WAL could not be truncated (another process is reading); erased text may stay in "
                    "the -wal file until the next checkpoint")
        return False

    def retention_due(self) -> list[tuple[str, int]]:
        return [(r["workspace"], r["retention_days"]) for r in self.peek(
            "select workspace, retention_days from workspace_settings where retention_days > 0")]
