"""Several real `parley` processes on one database: each owns its runs, and nothing a
process does at start-up or shutdown touches another process's live work."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.fakes.llm_server import FakeLLMServer, Scenario, running_in_thread
from tests.fakes.slack_api import FakeSlackAPI, sign

ROOT = Path(__file__).resolve().parent.parent
PROVIDERS = ("one", "two")


def base_env(tmp_path: Path, llm_url: str) -> dict[str, str]:
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        "".join(
            f'[providers.{p}]\nlabel = "{p}"\nbase_url = "{llm_url}"\nkey_env = "K_{p.upper()}"\n'
            f'default_model = "{p}-m"\n[providers.{p}.models."{p}-m"]\ninput = 1.0\noutput = 2.0\n'
            for p in PROVIDERS
        )
    )
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    return {
        **keep,
        "PARLEY_CONFIG": str(cfg),
        "PARLEY_DB": str(tmp_path / "shared.db"),
        **{f"K_{p.upper()}": "k-" + secrets.token_hex(8) for p in PROVIDERS},
        "PARLEY_RETRY_BASE_DELAY": "0.01",
        "PARLEY_LEASE_SECONDS": "3",
    }


def db_rows(path: str, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# --- one-shot CLI processes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with running_in_thread() as s:
        yield s


def test_concurrent_first_starts_on_a_fresh_database_all_succeed(llm: FakeLLMServer, tmp_path: Path) -> None:
    llm.reset()
    env = base_env(tmp_path, llm.base_url)
    procs = [
        subprocess.Popen([sys.executable, "-m", "bots.cli", "ask", "provider:one", f"q{i}"], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(10)
    ]
    results = [(p.wait(60), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in results] == [0] * 10, [err for _, err in results if "Traceback" in err]
    assert not any("locked" in err or "Traceback" in err for _, err in results)
    assert db_rows(env["PARLEY_DB"], "select count(*), sum(status = 'finished') from discussions") == [(10, 10)]


def streaming_ask(llm: FakeLLMServer, tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """A `parley ask --json` that is streaming a long, slow answer (its first text is out)."""
    llm.reset()
    llm.default = Scenario(text="word " * 400, chunk_chars=5, chunk_delay=0.02)
    env = base_env(tmp_path, llm.base_url)
    p = subprocess.Popen([sys.executable, "-m", "bots.cli", "ask", "--json", "provider:one", "Tell me"], env=env,
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stderr is not None
    while '"type": "text"' not in p.stdout.readline():
        pass
    return p, env


def test_a_reader_that_leaves_stops_the_discussion_cleanly(llm: FakeLLMServer, tmp_path: Path) -> None:
    p, env = streaming_ask(llm, tmp_path)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # `| head` exits
    rc = p.wait(30)
    err = p.stderr.read()
    assert rc == 1 and "Traceback" not in err and "BrokenPipe" not in err, err
    assert db_rows(env["PARLEY_DB"], "select status from discussions") == [("interrupted",)]
    assert db_rows(env["PARLEY_DB"], "select status, error_kind from turns") == [("failed", "interrupted")]


def test_a_killed_process_is_marked_interrupted_by_the_next_one(llm: FakeLLMServer, tmp_path: Path) -> None:
    p, env = streaming_ask(llm, tmp_path)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert db_rows(env["PARLEY_DB"], "select status from discussions") == [("running",)]
    # Any later `parley` sees that the owner is gone (its process no longer exists).
    out = subprocess.run([sys.executable, "-m", "bots.cli", "usage", "--json"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert db_rows(env["PARLEY_DB"], "select status from discussions") == [("interrupted",)]
    assert db_rows(env["PARLEY_DB"], "select status, error_kind from turns") == [("failed", "interrupted")]


# --- two Slack apps on one database ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlackProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bots.cli", "slack", "--port", str(self.port)],
            env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}/slack/events"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(300):
            if self.proc.poll() is not None:
                raise AssertionError(f"parley slack exited: {self.log.read_text()}")
            try:
                async with http.get(f"http://127.0.0.1:{self.port}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"parley slack did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
async def two_apps(tmp_path: Path) -> AsyncIterator[tuple[FakeLLMServer, FakeSlackAPI, dict[str, str]]]:
    async with FakeLLMServer() as llm:
        token = "xoxb-" + secrets.token_hex(12)
        async with FakeSlackAPI(bot_token=token) as slack:
            env = base_env(tmp_path, llm.base_url) | {
                "SLACK_BOT_TOKEN": token,
                "SLACK_SIGNING_SECRET": secrets.token_hex(16),
                "SLACK_API_URL": slack.base_url,
            }
            yield llm, slack, env


async def slash(http: aiohttp.ClientSession, url: str, secret: str, slack: FakeSlackAPI, channel: str,
                text: str) -> None:
    body = urlencode({
        "team_id": "T0TEST", "channel_id": channel, "user_id": "U1", "command": "/compare", "text": text,
        "api_app_id": "A0TEST", "response_url": slack.response_url, "trigger_id": "1.2.3",
    })
    headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(secret, body)}
    async with http.post(url, data=body, headers=headers) as r:
        assert r.status == 200 and await r.text() == ""


def replies(slack: FakeSlackAPI, channel: str) -> list[str]:
    [parent] = slack.parents(channel)
    return [m.text for m in slack.thread(channel, parent.ts)]


async def test_two_slack_processes_share_a_database_and_only_a_dead_ones_runs_are_marked(
    two_apps: tuple[FakeLLMServer, FakeSlackAPI, dict[str, str]], tmp_path: Path
) -> None:
    llm, slack, env = two_apps
    llm.default = Scenario(text="steady " * 120, chunk_chars=7, chunk_delay=0.02)  # ~2.4 s per answer
    secret = env["SLACK_SIGNING_SECRET"]
    apps: list[SlackProcess] = []
    async with aiohttp.ClientSession() as http:
        try:
            a = SlackProcess(env, tmp_path / "a.log")
            apps.append(a)
            await a.ready(http)
            await slash(http, a.url, secret, slack, "C1", "providers:one,two First?")
            await slack.wait_for(lambda: slack.parents("C1") and any(
                "steady steady" in t for t in replies(slack, "C1")), within=20)
            # A second process starts on the same database while the first one streams.
            b = SlackProcess(env, tmp_path / "b.log")
            apps.append(b)
            await b.ready(http)
            await slack.wait_for(lambda: sum(t.count("steady") >= 120 for t in replies(slack, "C1")) == 2
                                 and any("Total" in t for t in replies(slack, "C1")), within=30)
            assert not any("Interrupted" in t or "restarted" in t for t in replies(slack, "C1"))

            # Now one discussion on each; the first process dies in the middle of its own.
            await slash(http, a.url, secret, slack, "C2", "providers:one,two Second?")
            await slash(http, b.url, secret, slack, "C3", "providers:one,two Third?")
            await slack.wait_for(lambda: all(slack.parents(c) and any("steady steady" in t for t in replies(slack, c))
                                             for c in ("C2", "C3")), within=20)
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            c = SlackProcess(env, tmp_path / "c.log")  # its start-up recovery finds a's runs
            apps.append(c)
            await c.ready(http)
            await slack.wait_for(lambda: any("restarted" in t for t in replies(slack, "C2")), within=20)
            await slack.wait_for(lambda: any("Total" in t for t in replies(slack, "C3")), within=30)
            for _ in range(100):  # the live process closes its bookkeeping right after the summary
                if not db_rows(env["PARLEY_DB"], "select id from posts where open = 1"):
                    break
                await asyncio.sleep(0.1)
        finally:
            for app in apps:
                app.stop()
    c2, c3 = replies(slack, "C2"), replies(slack, "C3")
    answers = [t for t in c2 if "`one/one-m`" in t or "`two/two-m`" in t]
    assert len(answers) == 2 and all("Interrupted" in t and "steady" in t for t in answers)  # text kept
    assert sum("restarted before this discussion finished" in t for t in c2) == 1  # and the thread says so
    assert not any("Interrupted" in t or "restarted" in t for t in c3)  # the live one's are untouched
    assert sum(t.count("steady") >= 120 for t in c3) == 2
    db = env["PARLEY_DB"]
    status = dict(db_rows(db, "select prompt, status from discussions"))
    assert status == {"First?": "finished", "Second?": "interrupted", "Third?": "finished"}
    assert db_rows(db, "select d.prompt, p.ref from posts p join discussions d on d.id = p.discussion_id where p.open = 1") == []
    owners = db_rows(db, "select count(distinct owner) from discussions")
    assert owners == [(2,)]


async def test_sigterm_stops_a_slack_process_gracefully(
    two_apps: tuple[FakeLLMServer, FakeSlackAPI, dict[str, str]], tmp_path: Path
) -> None:
    """`docker stop` sends SIGTERM: the replies being written say they were interrupted
    (keeping their text), the store says so, and the process exits promptly and cleanly."""
    llm, slack, env = two_apps
    llm.default = Scenario(text="steady " * 400, chunk_chars=7, chunk_delay=0.02)  # ~8 s per answer
    async with aiohttp.ClientSession() as http:
        app = SlackProcess(env, tmp_path / "a.log")
        try:
            await app.ready(http)
            await slash(http, app.url, env["SLACK_SIGNING_SECRET"], slack, "C1", "providers:one,two Long?")
            await slack.wait_for(lambda: slack.parents("C1") and sum(
                "steady steady" in t for t in replies(slack, "C1")) == 2, within=20)
            app.proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(app.proc.wait, 15)
        finally:
            app.stop()
    assert rc == 0, app.log.read_text()
    answers = [t for t in replies(slack, "C1") if "`one/one-m`" in t or "`two/two-m`" in t]
    assert len(answers) == 2 and all("Interrupted" in t and "steady steady" in t for t in answers)
    db = env["PARLEY_DB"]
    assert db_rows(db, "select status from discussions") == [("interrupted",)]
    assert sorted(db_rows(db, "select status, error_kind from turns")) == [("failed", "interrupted")] * 2
    assert "Traceback" not in app.log.read_text()
