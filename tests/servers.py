"""Real PostgreSQL and Redis servers for the tests, on loopback ports of their own.

Each server lives in a temporary directory and is stopped at the end of the test
session; nothing is mocked. ``make test`` installs the Debian packages when they
are missing and sets ``PARLEY_REQUIRE_SERVERS=1``, so that a machine without them
fails loudly there instead of skipping; elsewhere a missing binary skips the test
with the command that installs it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

INSTALL = "apt-get install -y postgresql redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _missing(what: str) -> None:
    import pytest

    message = f"{what} is not installed ({INSTALL})"
    if os.environ.get("PARLEY_REQUIRE_SERVERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


class Postgres:
    """One PostgreSQL cluster; :meth:`database` hands each test a fresh database."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            _missing("PostgreSQL")
        assert initdb and pg_ctl
        self.pg_ctl = pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="parley-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        # PostgreSQL refuses to run as root: run it as the packaged 'postgres' user then.
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if not runuser:
                raise RuntimeError("running as root needs runuser to start PostgreSQL as another user")
            self.prefix = [runuser, "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")
        self._run([initdb, "-D", str(self.data), "-U", "parley", "--auth=trust", "-E", "UTF8", "--no-sync"])
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run([pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start"])
        _wait_port(self.port, None, "PostgreSQL")

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run([*self.prefix, *cmd], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed: {done.stderr.strip() or done.stdout.strip()}")

    @property
    def base(self) -> str:
        return f"postgresql://parley@127.0.0.1:{self.port}"

    def database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"{self.base}/postgres", autocommit=True) as conn:
            conn.execute(f"create database {name}")
        return f"{self.base}/{name}"

    def stop(self) -> None:
        subprocess.run([*self.prefix, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


class Redis:
    """One redis-server (or valkey-server) without persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if not binary:
            _missing("Redis")
        assert binary
        self.root = Path(tempfile.mkdtemp(prefix="parley-redis-"))
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, self.proc, "redis-server")
        self._db = 0

    def url(self) -> str:
        """A database of its own for each caller (Redis has 16), flushed first."""
        import redis

        self._db = (self._db + 1) % 16
        client = redis.Redis(host="127.0.0.1", port=self.port, db=self._db)
        client.flushdb()
        client.close()
        return f"redis://127.0.0.1:{self.port}/{self._db}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running(kind: type[Postgres] | type[Redis]) -> Iterator[Postgres | Redis]:
    server = kind()
    try:
        yield server
    finally:
        server.stop()
