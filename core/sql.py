"""The database dialects: SQLite (embedded default) and PostgreSQL, behind one API.

The store, governance and actions speak SQLite's SQL through sqlite-utils'
``Database``: ``db.execute(sql, args)``, ``db.query``, ``db.conn.execute``,
``db.table(name).insert/update/upsert/get/rows_where/create/add_column/create_index``
and ``with db.conn:`` transactions. :class:`PgDatabase` offers that same subset
on a psycopg connection, so one store implementation and one list of migrations
serve both. What it translates is small and mechanical:

- ``?`` placeholders become ``%s`` and ``:name`` ones (with a dict of parameters)
  ``%(name)s`` (every ``%`` doubled), ``[name]`` and the reserved column name
  ``user`` are quoted; string literals keep their ``?`` and ``:``;
- ``insert or ignore`` becomes ``insert … on conflict do nothing``;
- ``BEGIN IMMEDIATE`` (SQLite's "take the write lock now") becomes a transaction
  holding one advisory lock, so the transactions that relied on SQLite's single
  writer (budget reservations, click claims, migrations) are serialised across
  every replica exactly as they are on one file;
- parameters are sent untyped, so the server infers their type from the column
  they meet, as SQLite's type affinity does (a channel id given as a number
  compares with a text column); ``numeric`` results come back as int or float.

Queries must otherwise be portable: ``sum(case when … then 1 else 0 end)``
rather than summing a comparison, ``round(cast(x as numeric), n)``, ``returning``
instead of ``lastrowid``.

Why not SQLAlchemy with Alembic: the whole store is already written against
sqlite-utils (which stays the embedded engine, with its schema introspection
and migrations), about thirty statements in all; a dialect layer of this size
keeps every query as it is and the embedded install as light as it is, where
an ORM or a query builder would rewrite all of them and add two dependencies
for two dialects we can test directly.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

#: The advisory lock that stands for SQLite's write lock (an arbitrary, fixed number).
WRITE_LOCK = 0x7061726C  # "parl"

_TYPES = {str: "TEXT", int: "BIGINT", float: "DOUBLE PRECISION", bytes: "BYTEA", bool: "BIGINT"}
_QUOTED = re.compile(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")")
_BRACKET = re.compile(r"\[(\w+)\]")
_USER = re.compile(r"(?<![\w\"])(?<!%\()user(?![\w\"(])", re.IGNORECASE)  # not the parameter %(user)s
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_OR_IGNORE = re.compile(r"^\s*insert\s+or\s+ignore\s+into\b", re.IGNORECASE)
_BEGIN = re.compile(r"^\s*begin(\s+(deferred|immediate|exclusive))?(\s+transaction)?\s*;?\s*$", re.IGNORECASE)
_END = re.compile(r"^\s*(commit|end|rollback)(\s+transaction)?\s*;?\s*$", re.IGNORECASE)


def is_postgres(target: str | Path) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


def dialect_of(db: Any) -> str:
    return "postgres" if isinstance(db, PgDatabase) else "sqlite"


def describe(target: str | Path) -> str:
    """Where the store is, for logs and errors: a URL without its password."""
    text = str(target)
    if not is_postgres(text):
        return text
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", text)


@functools.lru_cache(maxsize=4096)
def translate(sql: str, with_params: bool = True, named: bool = False) -> str:
    """SQLite's SQL as PostgreSQL reads it (see the module docstring). ``named``: the
    parameters are a dict, so ``:name`` is a placeholder (sqlite3's named style)."""
    ignore = bool(_OR_IGNORE.match(sql))
    if ignore:
        sql = _OR_IGNORE.sub("insert into", sql, count=1)
    parts = _QUOTED.split(sql)
    if with_params:  # psycopg reads % everywhere, inside literals too
        parts[1::2] = [p.replace("%", "%%") for p in parts[1::2]]
    for i in range(0, len(parts), 2):  # the even parts are outside quotes
        part = parts[i]
        if with_params:
            part = part.replace("%", "%%")
            part = _NAMED.sub(r"%(\1)s", part) if named else part.replace("?", "%s")
        part = _BRACKET.sub(r'"\1"', part)
        parts[i] = _USER.sub('"user"', part)
    out = "".join(parts)
    if ignore:
        out = out.rstrip().rstrip(";") + " on conflict do nothing"
    return out


def _configure(conn: Any) -> None:
    """Untyped parameters (the server infers them) and plain numbers back."""
    from psycopg.adapt import Dumper, Loader

    class Untyped(Dumper):
        oid = 0  # "unknown": typed by the context it is used in

        def dump(self, obj: Any) -> bytes:
            if isinstance(obj, bool):
                return b"1" if obj else b"0"
            if isinstance(obj, float):
                return repr(obj).encode()
            return str(obj).encode()

    class Number(Loader):
        def load(self, data: Any) -> Any:
            value = Decimal(bytes(data).decode())
            return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)

    for kind in (str, int, float, bool):
        conn.adapters.register_dumper(kind, Untyped)
    conn.adapters.register_loader("numeric", Number)


class PgConnection:
    """A psycopg connection with sqlite3's transaction habits: ``with conn:`` is one
    transaction (committed on success, rolled back on error), ``BEGIN``/``COMMIT``
    statements work, and outside a transaction each statement commits by itself."""

    dialect = "postgres"

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        import psycopg

        self.url = url
        self._raw = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)))
        _configure(self._raw)
        self._tx = False
        self._lock = threading.RLock()

    # --- sqlite3.Connection's surface -------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self._tx

    def _begin(self, lock: bool) -> None:
        if not self._tx:
            self._raw.execute("BEGIN")
            self._tx = True
        if lock:
            self._raw.execute("select pg_advisory_xact_lock(%s)", [WRITE_LOCK])

    def execute(self, sql: str, args: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        with self._lock:
            m = _BEGIN.match(sql)
            if m:
                self._begin(lock=(m.group(2) or "").lower() in ("immediate", "exclusive"))
                return self._raw.cursor()
            m = _END.match(sql)
            if m:
                if self._tx:
                    self._tx = False
                    self._raw.execute("ROLLBACK" if m.group(1).lower() == "rollback" else "COMMIT")
                return self._raw.cursor()
            params = list(args) if isinstance(args, (list, tuple)) else args
            try:
                return self._raw.execute(translate(sql, bool(params), isinstance(params, dict)), params or None)
            except Exception:
                if self._tx:  # PostgreSQL refuses everything after an error until the rollback
                    self._abort()
                raise

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        with self._lock:
            cur = self._raw.cursor()
            try:
                cur.executemany(translate(sql, True), [list(r) for r in rows])
            except Exception:
                if self._tx:
                    self._abort()
                raise
            return cur

    def _abort(self) -> None:
        self._tx = False
        with contextlib.suppress(Exception):
            self._raw.execute("ROLLBACK")

    def commit(self) -> None:
        with self._lock:
            if self._tx:
                self._tx = False
                self._raw.execute("COMMIT")

    def rollback(self) -> None:
        with self._lock:
            if self._tx:
                self._abort()

    def __enter__(self) -> PgConnection:
        self._lock.acquire()
        try:
            self._begin(lock=False)
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self.commit()
            else:
                self.rollback()
        finally:
            self._lock.release()

    def close(self) -> None:
        self._raw.close()

    @property
    def closed(self) -> bool:
        return bool(self._raw.closed)


class PgTable:
    """The part of sqlite-utils' ``Table`` the store uses, on PostgreSQL."""

    def __init__(self, db: PgDatabase, name: str) -> None:
        self.db = db
        self.name = name

    @property
    def _q(self) -> str:
        return f'"{self.name}"'

    # --- schema -------------------------------------------------------------------------
    def create(
        self,
        columns: dict[str, Any],
        pk: str | tuple[str, ...] | None = None,
        foreign_keys: Sequence[tuple[str, str, str]] = (),
        **_: Any,
    ) -> PgTable:
        keys = (pk,) if isinstance(pk, str) else tuple(pk or ())
        cols = []
        for name, kind in columns.items():
            sql_type = _TYPES.get(kind, "TEXT")
            if keys == (name,) and kind is int:
                cols.append(f'"{name}" BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY')
            elif keys == (name,):
                cols.append(f'"{name}" {sql_type} PRIMARY KEY')
            else:
                cols.append(f'"{name}" {sql_type}' + (" NOT NULL" if name in keys else ""))
        if len(keys) > 1:
            cols.append("PRIMARY KEY (" + ", ".join(f'"{k}"' for k in keys) + ")")
        for col, other, other_col in foreign_keys:
            cols.append(f'FOREIGN KEY ("{col}") REFERENCES "{other}" ("{other_col}")')
        self.db.conn.execute(f"CREATE TABLE {self._q} ({', '.join(cols)})")
        return self

    def add_column(self, name: str, kind: Any = str, **_: Any) -> PgTable:
        self.db.conn.execute(f'ALTER TABLE {self._q} ADD COLUMN "{name}" {_TYPES.get(kind, "TEXT")}')
        return self

    def create_index(self, columns: Sequence[str], index_name: str | None = None, unique: bool = False,
                     **_: Any) -> PgTable:
        name = index_name or f"idx_{self.name}_{'_'.join(columns)}"
        cols = ", ".join(f'"{c}"' for c in columns)
        self.db.conn.execute(f'CREATE {"UNIQUE " if unique else ""}INDEX "{name}" ON {self._q} ({cols})')
        return self

    @property
    def columns_dict(self) -> dict[str, str]:
        return {r["column_name"]: r["data_type"] for r in self.db.query(
            "select column_name, data_type from information_schema.columns "
            "where table_schema = current_schema() and table_name = ? order by ordinal_position", [self.name])}

    @property
    def pks(self) -> list[str]:
        rows = self.db.query(
            "select a.attname as name from pg_index i join pg_attribute a on a.attrelid = i.indrelid "
            "and a.attnum = any(i.indkey) where i.indrelid = cast(? as regclass) and i.indisprimary "
            "order by array_position(i.indkey, a.attnum)", [self._q])
        return [r["name"] for r in rows] or ["rowid"]

    def exists(self) -> bool:
        return self.name in self.db.table_names()

    # --- rows ---------------------------------------------------------------------------
    def insert(self, row: dict[str, Any], **_: Any) -> PgTable:
        return self.insert_all([row])

    def insert_all(self, rows: Iterable[dict[str, Any]], **_: Any) -> PgTable:
        for row in rows:
            cols = list(row)
            self.db.conn.execute(
                f"insert into {self._q} ({', '.join(f'[{c}]' for c in cols)}) values ({', '.join('?' * len(cols))})",
                [row[c] for c in cols],
            )
        return self

    def upsert(self, row: dict[str, Any], pk: str | tuple[str, ...], **_: Any) -> PgTable:
        keys = (pk,) if isinstance(pk, str) else tuple(pk)
        cols = list(row)
        rest = [c for c in cols if c not in keys]
        action = ("update set " + ", ".join(f"[{c}] = excluded.[{c}]" for c in rest)) if rest else "nothing"
        self.db.conn.execute(
            f"insert into {self._q} ({', '.join(f'[{c}]' for c in cols)}) values ({', '.join('?' * len(cols))}) "
            f"on conflict ({', '.join(f'[{k}]' for k in keys)}) do {action}",
            [row[c] for c in cols],
        )
        return self

    def _where_pk(self, pk_values: Any) -> tuple[str, list[Any]]:
        keys = self.pks
        values = list(pk_values) if isinstance(pk_values, (list, tuple)) else [pk_values]
        return " and ".join(f"[{k}] = ?" for k in keys), values

    def update(self, pk_values: Any, updates: dict[str, Any] | None = None, **_: Any) -> PgTable:
        if updates:
            where, args = self._where_pk(pk_values)
            sets = ", ".join(f"[{c}] = ?" for c in updates)
            self.db.conn.execute(f"update {self._q} set {sets} where {where}", [*updates.values(), *args])
        return self

    def get(self, pk_values: Any) -> dict[str, Any]:
        from sqlite_utils.db import NotFoundError

        where, args = self._where_pk(pk_values)
        rows = list(self.db.query(f"select * from {self._q} where {where}", args))
        if not rows:
            raise NotFoundError
        return rows[0]

    def rows_where(self, where: str | None = None, where_args: Sequence[Any] | None = None,
                   order_by: str | None = None, limit: int | None = None, **_: Any) -> Iterator[dict[str, Any]]:
        sql = f"select * from {self._q}"
        if where:
            sql += f" where {where}"
        if order_by:
            sql += f" order by {order_by}"
        if limit is not None:
            sql += f" limit {int(limit)}"
        return self.db.query(sql, list(where_args or ()))

    @property
    def rows(self) -> Iterator[dict[str, Any]]:
        return self.rows_where()

    @property
    def count(self) -> int:
        return int(next(iter(self.db.query(f"select count(*) as n from {self._q}")))["n"])


class PgDatabase:
    """sqlite-utils' ``Database`` surface on one PostgreSQL connection."""

    dialect = "postgres"

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.conn = PgConnection(url, timeout=timeout)

    def execute(self, sql: str, args: Sequence[Any] | None = None) -> Any:
        return self.conn.execute(sql, args)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> Iterator[dict[str, Any]]:
        cur = self.conn.execute(sql, params)
        names = [d.name for d in cur.description or ()]
        for row in cur.fetchall():
            yield dict(zip(names, row, strict=True))

    def table(self, name: str) -> PgTable:
        return PgTable(self, name)

    def __getitem__(self, name: str) -> PgTable:
        return self.table(name)

    def table_names(self) -> list[str]:
        return [r["table_name"] for r in self.query(
            "select table_name from information_schema.tables where table_schema = current_schema() "
            "and table_type = 'BASE TABLE' order by table_name")]

    def view_names(self) -> list[str]:
        return [r["table_name"] for r in self.query(
            "select table_name from information_schema.views where table_schema = current_schema()")]

    def close(self) -> None:
        self.conn.close()
