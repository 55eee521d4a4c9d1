"""Loopback fakes of the platforms and providers, and small helpers for tests that use them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.sql import PgDatabase, is_postgres

if TYPE_CHECKING:
    import pytest


def database_bytes(store: Any = None) -> bytes:
    """Everything the store holds for this test, to search for leaks. On SQLite every byte it
    has written (the database and its WAL, so text left in free pages counts too); on
    PostgreSQL (``PARLEY_DATABASE_URL`` set, as ``store_target`` does), whose files belong to
    the server, every row of every table, read on a connection of its own (what is committed).
    ``store``: the :class:`core.store.Store` to read (its queued writes go in first);
    without it, the store this test's settings name."""
    if store is not None:
        store.flush()
        target = str(store.path)
    else:
        target = os.environ.get("PARLEY_DATABASE_URL") or os.environ["PARLEY_DB"]
    if is_postgres(target):
        return _every_row(target)
    db = Path(target)
    wal = Path(f"{db}-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def _every_row(url: str) -> bytes:
    db = PgDatabase(url)
    try:
        tables = db.table_names()
        assert "discussions" in tables, tables  # the store's schema is there: this is its database
        rows = (r for t in tables for r in db.query(f'select * from "{t}"'))
        return b"\n".join(_text(v) for r in rows for v in r.values())
    finally:
        db.close()


def _text(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode()


def use_store_target(request: pytest.FixtureRequest) -> None:
    """For a rig fixture that builds its services: if the test asks for ``store_target`` (so
    runs on SQLite and on PostgreSQL), set it up first, whatever the order of the test's
    arguments, so the rig's ``Settings()`` opens that store."""
    if "store_target" in request.fixturenames:
        request.getfixturevalue("store_target")
