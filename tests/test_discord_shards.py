"""Two Discord shard processes of one bot share Discord's global rate limit.

First, in this process: a shard connects where ``GET /gateway/bot`` says and receives only its
own guilds, and every request sent with the bot token (and no interaction response) takes a call
from the bot-wide bucket, which a global 429 pauses.

Two real ``parley discord`` processes (``PARLEY_DISCORD_SHARDS=0-0/2`` and ``1-1/2``) run against
the loopback fake Discord (tests/fakes/discord_api.py): its gateway routes each guild's events to
shard ``(guild_id >> 22) % 2`` as Discord does, and its REST API enforces the global limit, 50
requests per second per bot token over any sliding second, whichever process sends them. Both
processes share one PostgreSQL database; with one Redis (``PARLEY_REDIS_URL``) they also draw on one
bot-wide bucket. The load: 80 ``/ask`` discussions at once, 40 per shard, each streaming into its own
thread, more writes than 50 a second when each process spends a whole bucket of its own.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import psycopg
import pytest
from discord.gateway import DiscordWebSocket

from bots.discord.app import DiscordFront
from bots.discord.config import DiscordSettings, configure_api, configure_gateway, make_client
from core.config import Settings
from core.services import build_services
from tests.fakes.discord_api import GLOBAL_LIMIT, FakeDiscordAPI, GatewaySession, shard_of, snowflake
from tests.fakes.llm_server import FakeLLMServer, Scenario, running_in_thread
from tests.test_processes import ROOT, base_env

SHARDS = 2
GUILDS_PER_SHARD = 4
CHANNELS_PER_GUILD = 10  # one discussion per channel: 40 threads streaming per process


def bot_token(user_id: int) -> str:
    """Shaped like a bot token (base64 user id . timestamp . hmac), made up at run time."""
    head = base64.b64encode(str(user_id).encode()).decode().rstrip("=")
    return f"{head}.{secrets.token_urlsafe(5)}.{secrets.token_urlsafe(27)}"


def question(i: int) -> str:
    """A question of its own for each discussion; the fake model answers it back (echo), so every
    thread's answer is known and unlike any other (~1,200 characters in 20 chunks, ~6 s of streaming)."""
    return f"Q{i:03d} " + " ".join(f"w{i:03d}.{k:03d}" for k in range(130))


class DiscordProcess:
    """``parley discord`` in its own process, running the given shards."""

    def __init__(self, env: dict[str, str], shards: str, log: Path) -> None:
        self.shards = shards
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bots.cli", "discord"], env={**env, "PARLEY_DISCORD_SHARDS": shards},
            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"parley discord ({self.shards}) exited: {self.log.read_text()}")
        return True

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)  # a loaded machine (other suites, benchmarks) slows the clean stop
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@dataclass
class Ask:
    index: int
    guild: int
    channel: int
    payload: dict[str, Any]
    sessions: list[GatewaySession]


@dataclass
class Run:
    api: FakeDiscordAPI
    llm: FakeLLMServer
    guilds: dict[int, list[int]]  # shard id -> its guilds
    asks: list[Ask]
    procs: list[DiscordProcess]
    seconds: float  # from the first interaction to the last summary
    token: str
    pids: dict[str, int]  # the store's owner id of each live process -> its pid


def guilds_by_shard() -> dict[int, list[int]]:
    """Guild ids (snowflakes) until every shard has its share."""
    out: dict[int, list[int]] = {s: [] for s in range(SHARDS)}
    while any(len(g) < GUILDS_PER_SHARD for g in out.values()):
        gid = snowflake()
        if len(out[shard_of(gid, SHARDS)]) < GUILDS_PER_SHARD:
            out[shard_of(gid, SHARDS)].append(gid)
        time.sleep(0.001)  # the next snowflake's millisecond: the shard follows the timestamp
    return out


def thread_of(api: FakeDiscordAPI, channel: int) -> int | None:
    """The thread of the (one) discussion asked in ``channel``: made from its parent message."""
    parents = api.channel_messages(channel)
    return parents[0].id if parents and parents[0].id in api.threads else None


def finished(api: FakeDiscordAPI, channel: int) -> bool:
    thread = thread_of(api, channel)
    if thread is None:
        return False
    messages = api.channel_messages(thread)
    return bool(messages) and "**Total**" in messages[-1].content


def db_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


# --- one shard in this process ---------------------------------------------------------------------


async def test_a_shard_connects_where_discord_says_and_every_bot_request_takes_a_global_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app_id = snowflake()
    token = bot_token(app_id)
    guilds = guilds_by_shard()
    async with FakeLLMServer() as llm, FakeDiscordAPI(token=token, app_id=app_id, shards=4) as api:
        llm.default = Scenario(echo=True, chunk_chars=20, chunk_delay=0.01)
        for gids in guilds.values():
            for gid in gids:
                api.add_guild(gid)
        for name, value in base_env(tmp_path, llm.base_url).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("DISCORD_TOKEN", token)
        monkeypatch.setenv("DISCORD_API_URL", api.base_url)
        monkeypatch.setenv("PARLEY_DISCORD_SHARDS", "1-1/2")
        monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)  # restored after the test
        monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)
        settings = DiscordSettings()
        configure_api(settings)
        services = build_services(Settings())
        client = make_client(settings, guild_ready_timeout=0.01)
        front = DiscordFront(services, client)
        bot = front.budgets.bot
        connecting: asyncio.Task[None] | None = None
        try:
            await front.login(token)
            await front.start()
            with caplog.at_level(logging.WARNING, "parley.discord"):
                assert await configure_gateway(client) == 4
            assert str(DiscordWebSocket.DEFAULT_GATEWAY) == api.gateway_url
            assert "Discord recommends 4 shards for this bot; PARLEY_DISCORD_SHARDS runs 2 in all" in caplog.text
            connecting = asyncio.create_task(client.connect())
            await api.wait_for(lambda: len(client.guilds) == GUILDS_PER_SHARD, what="shard 1's guilds")
            [session] = api.sessions
            assert session.shard == (1, 2) and {g.id for g in client.guilds} == set(guilds[1])

            # A global 429 on the parent message (discord.py retries it by itself) pauses the bucket.
            api.rate_limit("POST", r"^/channels/\d+/messages$", retry_after=0.3, global_=True)
            gid = guilds[1][0]
            [channel] = api.guild_channels(gid)
            before = bot.clock()
            payload = api.interaction_payload(gid, channel, snowflake(), "ask", {"prompt": "Q1 Hi?", "provider": "one"})
            assert await api.dispatch("INTERACTION_CREATE", payload) == [session]
            other = api.interaction_payload(guilds[0][0], api.guild_channels(guilds[0][0])[0], snowflake(), "ask",
                                            {"prompt": "Q2 Hi?", "provider": "one"})
            assert await api.dispatch("INTERACTION_CREATE", other) == []  # shard 0's: not this session's
            await api.wait_for(lambda: finished(api, channel), what="the summary")
            await front.idle()
        finally:
            await front.shutdown()
            await client.close()
            if connecting is not None:
                await asyncio.wait_for(connecting, 10)
            await services.aclose()
    assert bot.paused_until >= before + 0.3
    thread = thread_of(api, channel)
    assert thread is not None and len(api.channel_messages(channel)) == 1  # the retry posted once
    assert api.channel_messages(thread)[0].content.split("\n", 1)[1] == "ECHO: Q1 Hi?"
    # Every request the global limit counts took one call from the bucket; the interaction's
    # responses (callback, edits of the original) were made and took none.
    counted = [c for c in api.calls if not c.path.startswith(("/interactions/", "/webhooks/"))]
    assert api.calls_to("POST", "/interactions/") and api.calls_to("PATCH", "/webhooks/")
    assert len(api.global_calls) == len(counted) == bot.granted
    assert {c.path for c in counted} >= {"/users/@me", "/gateway/bot", f"/channels/{channel}/messages"}


# --- two shard processes -----------------------------------------------------------------------------


async def run_shards(tmp_path: Path, pg_url: str, redis_url: str | None, *, complete_within: float) -> Run:
    app_id = snowflake()
    token = bot_token(app_id)
    guilds = guilds_by_shard()
    with running_in_thread() as llm:  # its own loop: the fake Discord's clock is not held up by it
        llm.default = Scenario(echo=True, chunk_chars=60, chunk_delay=0.3)
        async with FakeDiscordAPI(token=token, app_id=app_id, global_limit=GLOBAL_LIMIT, shards=SHARDS) as api:
            for gids in guilds.values():
                for gid in gids:
                    api.add_guild(gid, channels=CHANNELS_PER_GUILD)
            env = base_env(tmp_path, llm.base_url) | {
                "DISCORD_TOKEN": token,
                "DISCORD_API_URL": api.base_url,
                "PARLEY_DATABASE_URL": pg_url,
            }
            if redis_url:
                env["PARLEY_REDIS_URL"] = redis_url
            procs = [DiscordProcess(env, f"{s}-{s}/{SHARDS}", tmp_path / f"shard{s}.log") for s in range(SHARDS)]
            asks: list[Ask] = []
            try:
                everywhere = {(s, SHARDS) for s in range(SHARDS)}
                await api.wait_for(
                    lambda: all(p.alive() for p in procs) and {s.shard for s in api.live_sessions()} == everywhere,
                    within=60, what="both shards identified")
                # Interleaved: both processes take their load at the same time.
                channels = {s: [(g, c) for g in gids for c in api.guild_channels(g)] for s, gids in guilds.items()}
                started = time.monotonic()
                for pairs in zip(*channels.values(), strict=True):
                    for gid, channel in pairs:
                        i = len(asks)
                        payload = api.interaction_payload(gid, channel, snowflake(), "ask",
                                                          {"prompt": question(i), "provider": "one"})
                        asks.append(Ask(i, gid, channel, payload, await api.dispatch("INTERACTION_CREATE", payload)))
                await api.wait_for(lambda: all(p.alive() for p in procs) and all(finished(api, a.channel) for a in asks),
                                   within=complete_within, what="every discussion's summary", every=0.5)
                seconds = time.monotonic() - started
                # The summary is posted before the store records the end: wait for the records too.
                for _ in range(200):
                    if db_rows(pg_url, "select count(*) from discussions where status = 'running'") == [(0,)]:
                        break
                    await asyncio.sleep(0.1)
                pids = {str(i): int(pid) for i, pid in db_rows(pg_url, "select id, pid from instances")}
            finally:
                codes = [p.stop() for p in procs]
            assert codes == [0] * SHARDS, [p.log.read_text()[-3000:] for p in procs]
            return Run(api, llm, guilds, asks, procs, seconds, token, pids)


def report(run: Run, label: str) -> str:
    api = run.api
    return (f"{label}: peak {api.peak()} requests in any 1 s (accepted {api.peak(accepted=True)}), "
            f"{api.global_limited} global 429s, {len(api.global_calls)} requests in {run.seconds:.1f}s; "
            f"per second: {api.per_second()}")


def answered_once_in_full(run: Run) -> None:
    """Every discussion answered once: one callback, one parent message, one thread holding its
    answer (exactly what the model said) and its summary, nothing else."""
    api = run.api
    answers = {}
    for r in run.llm.requests:
        said = [m["content"] for m in r.body["messages"] if m["role"] == "user"][-1]
        answers[said.split(" ", 1)[0]] = "ECHO: " + said
    assert len(run.llm.requests) == len(run.asks)
    callbacks = Counter(r["interaction_id"] for r in api.interaction_responses)
    assert sorted(callbacks.values()) == [1] * len(run.asks)
    assert len(api.threads) == len(run.asks)
    for ask in run.asks:
        assert len(api.channel_messages(ask.channel)) == 1  # one parent message
        thread = thread_of(api, ask.channel)
        assert thread is not None
        messages = api.channel_messages(thread)
        turns = [m for m in messages if m.content.split("\n", 1)[0].count("`") >= 2]
        assert len(turns) == 1 and len(messages) == 2  # the answer and its summary
        assert turns[0].content.split("\n", 1)[1] == answers[f"Q{ask.index:03d}"]


async def test_two_shard_processes_sharing_redis_stay_within_the_global_limit(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    run = await run_shards(tmp_path, pg_url, redis_url, complete_within=75)
    api = run.api
    print(report(run, "shared"))

    # The gateway: one session per shard, each sent its own guilds and only those.
    assert sorted(s.shard for s in api.sessions) == [(s, SHARDS) for s in range(SHARDS)]
    for session in api.sessions:
        sent = {int(g["id"]) for g in session.received("GUILD_CREATE")}
        assert sent == set(run.guilds[session.shard[0]])
    for ask in run.asks:
        [session] = ask.sessions
        assert session.shard == (shard_of(ask.guild, SHARDS), SHARDS)

    # Each process ran the discussions of its own shard's guilds, all of them and no other.
    rows = db_rows(pg_url, "select owner, workspace, status from discussions")
    assert len(rows) == len(run.asks) and {r[2] for r in rows} == {"finished"}
    shard_of_pid = {p.proc.pid: shard for shard, p in enumerate(run.procs)}
    ran: dict[int, set[str]] = {}
    for owner, workspace, _ in rows:
        ran.setdefault(shard_of_pid[run.pids[owner]], set()).add(workspace)
    assert ran == {shard: {f"discord:{g}" for g in gids} for shard, gids in run.guilds.items()}

    # Discord's global limit, across both processes: never a 429, no second above 50.
    assert api.global_limited == 0
    assert api.peak() <= GLOBAL_LIMIT

    answered_once_in_full(run)
    for p in run.procs:
        log = p.log.read_text()
        assert "Traceback" not in log and run.token not in log


async def test_without_redis_each_shard_process_spends_a_whole_bucket_and_exceeds_the_limit(
    tmp_path: Path, pg_url: str
) -> None:
    """The converse, so the test above can fail: the same load with no Redis, each process on its
    own bot-wide bucket, together sends more than 50 requests in a second and draws global 429s."""
    run = await run_shards(tmp_path, pg_url, None, complete_within=75)
    api = run.api
    print(report(run, "alone"))
    assert api.peak() > GLOBAL_LIMIT
    assert api.global_limited > 0
    # Nothing is lost to the 429s: the renderer waited and sent the latest text again.
    answered_once_in_full(run)
