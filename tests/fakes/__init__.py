"""Loopback fakes of the platforms and providers, and small helpers for tests that use them."""

from __future__ import annotations

import os
from pathlib import Path


def database_bytes() -> bytes:
    """Everything SQLite has written for this test (the database and its WAL), to search for leaks."""
    db = Path(os.environ["PARLEY_DB"])
    wal = Path(f"{db}-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
