"""Shared fixtures. Every test is offline: pytest-socket (configured in
pyproject.toml) refuses connections to anything but loopback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from core.config import Settings
from core.providers.catalog import load_catalog
from core.services import Services, build_services


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's keys, .env or database."""
    for name in list(os.environ):
        if name.startswith(("PARLEY_", "SLACK_", "DISCORD_")) or name in load_catalog().env_vars():
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    monkeypatch.setenv("PARLEY_DB", str(tmp_path / "parley.db"))
    monkeypatch.setenv("PARLEY_RETRY_BASE_DELAY", "0.01")


@pytest.fixture
def make_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return Settings()

    return make


@pytest.fixture
async def services(make_settings: Callable[..., Settings]) -> AsyncIterator[Services]:
    s = build_services(make_settings())
    try:
        yield s
    finally:
        await s.aclose()


# --- real servers (tests/servers.py) ------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server():  # type: ignore[no-untyped-def]
    from tests.servers import Postgres, running

    with running(Postgres) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server():  # type: ignore[no-untyped-def]
    from tests.servers import Redis, running

    with running(Redis) as server:
        yield server


@pytest.fixture
def pg_url(postgres_server) -> str:  # type: ignore[no-untyped-def]
    """A fresh PostgreSQL database of this test's own."""
    return str(postgres_server.database())


@pytest.fixture
def redis_url(redis_server) -> str:  # type: ignore[no-untyped-def]
    """A flushed Redis database for this test."""
    return str(redis_server.url())


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 clean_env: None) -> str:
    """Where this test's store is, once on each dialect: the SQLite file ``PARLEY_DB`` names,
    or a fresh PostgreSQL database (then ``PARLEY_DATABASE_URL`` names it, so every
    ``Settings()`` of the test opens the same store)."""
    if request.param == "sqlite":
        return str(tmp_path / "parley.db")
    url = str(request.getfixturevalue("pg_url"))
    monkeypatch.setenv("PARLEY_DATABASE_URL", url)
    return url
