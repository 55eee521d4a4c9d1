"""What replicas share (core/coord.py) against a real redis-server (tests/servers.py), and the
in-process coordinator held to the same behaviour. Two coordinator instances on one Redis
stand for two replicas; limits are checked by counting grants in sliding windows, never by
how long something took."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import discord
import pytest
import redis.asyncio
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bots.discord.app import DiscordFront
from bots.discord.ratelimit import ChannelBudgets
from bots.slack.app import SlackFront
from bots.slack.budgets import WorkspaceBudgets
from core.budget import TokenBucket, WindowBudget
from core.config import Settings
from core.coord import Coordinator, Dedupe, LocalCoordinator, RedisCoordinator, Unavailable, coordinator
from core.errors import redact
from core.services import build_services
from tests.fakes.llm_server import FakeLLMServer, Scenario
from tests.fakes.slack_api import FakeSlackAPI, sign


@pytest.fixture(params=["local", "redis"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Coordinator, Coordinator]]:
    """Two replicas' coordinators: two clients of one Redis, or one process's memory (shared by
    whatever in the process uses it)."""
    if request.param == "local":
        one = LocalCoordinator()
        yield one, one
        return
    url = request.getfixturevalue("redis_url")
    a, b = RedisCoordinator(url), RedisCoordinator(url)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


def worst_window(stamps: Iterable[float], window: float) -> int:
    """The most stamps in any half-open window ``[t, t + window)`` (a slot frees exactly ``window`` later)."""
    s = sorted(stamps)
    return max((sum(1 for u in s[i:] if u - t < window - 1e-7) for i, t in enumerate(s)), default=0)


# --- the coordinator's operations, in process and on Redis ------------------------------------------------


async def test_a_sliding_window_shared_by_two_replicas_never_grants_more_than_its_limit(pair) -> None:  # type: ignore[no-untyped-def]
    limit, window, wanted = 5, 0.25, 30
    granted: list[float] = []
    refused = 0

    async def worker(coord: Coordinator) -> None:
        nonlocal refused
        while len(granted) < wanted:
            taken = await coord.take("test:window", limit, window)
            if taken.granted:
                granted.append(taken.at)
            else:
                refused += 1
                await asyncio.sleep(taken.wait)

    await asyncio.gather(*(worker(pair[i % 2]) for i in range(12)))
    # Counted in the coordinator's own clock (Redis server time), where the decisions were made.
    assert worst_window(granted, window) == limit
    assert refused > 0 and len(granted) >= wanted  # the limit was reached, again and again


async def test_a_window_take_can_leave_slots_for_what_is_still_to_come(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    assert (await a.take("test:reserve", 4, 30.0, reserve=2)).granted
    assert (await b.take("test:reserve", 4, 30.0, reserve=2)).granted
    refused = await a.take("test:reserve", 4, 30.0, reserve=2)  # two slots held back for finals
    assert not refused.granted and 0 < refused.wait <= 30.0 and not refused.paused
    assert (await b.take("test:reserve", 4, 30.0)).granted and (await a.take("test:reserve", 4, 30.0)).granted
    full = await b.take("test:reserve", 4, 30.0)
    assert not full.granted and full.wait == pytest.approx(30.0, abs=1.0)  # until the first slot frees


async def test_a_shared_token_bucket_gives_its_burst_then_its_rate(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    assert [(await c.take_rate("test:rate", 10.0, 3)).granted for c in (a, b, a)] == [True] * 3
    refused = await b.take_rate("test:rate", 10.0, 3)
    assert not refused.granted and refused.wait == pytest.approx(0.1, abs=0.02)  # one token at 10/s

    stamps: list[float] = []
    rate, burst = 40.0, 4

    async def worker(coord: Coordinator) -> None:
        while len(stamps) < 40:
            taken = await coord.take_rate("test:rate2", rate, burst)
            if taken.granted:
                stamps.append(taken.at)
            else:
                await asyncio.sleep(taken.wait)

    await asyncio.gather(*(worker(pair[i % 2]) for i in range(8)))
    for t in (0.1, 0.25):
        assert worst_window(stamps, t) <= burst + rate * t + 1e-6


async def test_a_pause_seen_by_one_replica_holds_every_replica(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    await a.pause("test:paused", 5.0)
    for taken in (await b.take("test:paused", 100, 1.0), await b.take_rate("test:paused", 100.0, 10)):
        assert not taken.granted and taken.paused and 4.0 < taken.wait <= 5.0
    await b.pause("test:paused", 0.1)  # a shorter pause never shortens a longer one
    assert (await a.take("test:paused", 100, 1.0)).wait > 4.0
    assert (await a.take("test:other", 100, 1.0)).granted  # other keys are not paused


async def test_dedupe_is_true_exactly_once_across_replicas(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    answers = await asyncio.gather(*(c.first("test:event", "Ev1", 60.0) for c in (a, b) * 10))
    assert sorted(answers) == [False] * 19 + [True]
    assert await b.first("test:event", "Ev2", 60.0) and not await a.first("test:event", "Ev2", 60.0)
    assert await a.first("test:other-kind", "Ev1", 60.0)  # kinds are separate
    assert await a.first("test:short", "x", 0.05)
    await asyncio.sleep(0.2)
    assert await b.first("test:short", "x", 0.05)  # remembered for the ttl only
    assert await a.ping() and await b.ping()


async def test_redis_decides_on_its_own_clock_and_keeps_everything_under_the_prefix(redis_url: str) -> None:
    coord = RedisCoordinator(redis_url)
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        before = await raw.time()
        taken = await coord.take("slack:T1:chat.update", 5, 60.0)
        after = await raw.time()
        # The decision's time is the server's (TIME inside the script), not this machine's clock.
        assert before[0] + before[1] / 1e6 - 1e-6 <= taken.at <= after[0] + after[1] / 1e6 + 1e-6
        await coord.take_rate("discord:global", 45.0, 10)
        await coord.pause("discord:global", 1.0)
        await coord.first("slack:event", "Ev1", 60.0)
        keys = sorted(k.decode() for k in await raw.keys("*"))
        assert keys == [
            "parley:pause:{discord:global}",
            "parley:rate:{discord:global}",
            "parley:seen:slack:event:Ev1",
            "parley:window:{slack:T1:chat.update}",
        ]
        for key in keys:
            assert 0 < await raw.pttl(key) <= 3_600_000  # nothing stays forever
        await raw.script_flush()  # a Redis restart forgets the scripts: EVALSHA loads them again
        assert (await coord.take("slack:T1:chat.update", 5, 60.0)).granted
    finally:
        await coord.aclose()
        await raw.aclose()


def test_the_factory_picks_redis_only_when_a_url_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(coordinator(Settings()), LocalCoordinator)
    monkeypatch.setenv("PARLEY_REDIS_URL", "redis://:s3cret-pass-word@127.0.0.1:1/0")
    settings = Settings()
    coord = coordinator(settings)
    assert isinstance(coord, RedisCoordinator) and coord.shared
    assert "s3cret-pass-word" not in repr(settings)
    assert redact("AUTH s3cret-pass-word failed") == "AUTH [redacted] failed"  # the password alone, too


# --- Redis briefly unreachable -----------------------------------------------------------------------


class Proxy:
    """A loopback TCP relay to the real Redis that can be cut and restored (the network between a
    replica and Redis going away for a while)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        await self.server.wait_closed()
        self.writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


@pytest.fixture
async def with_password(redis_url: str) -> AsyncIterator[tuple[str, str, str]]:
    """An ACL user with a password on the session's Redis: (user, password, database)."""
    raw = redis.asyncio.Redis.from_url(redis_url)
    user, password = "parley-test", "pw-" + secrets.token_hex(8)
    await raw.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
                          commands=["+@all"])
    try:
        yield user, password, redis_url.rsplit("/", 1)[1]
    finally:
        await raw.acl_deluser(user)
        await raw.aclose()


async def test_while_redis_is_unreachable_budgets_wait_dedupe_falls_back_and_nothing_leaks(
    redis_server: Any, with_password: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    user, password, db = with_password
    proxy = Proxy(redis_server.port)
    await proxy.up()
    coord = RedisCoordinator(f"redis://{user}:{password}@127.0.0.1:{proxy.port}/{db}", timeout=0.5)
    bucket = WindowBudget(3, 60.0, latency=0.0).share(coord, "test:outage")
    dedupe = Dedupe(coord, "test:event", ttl=60.0)
    caplog.set_level(logging.INFO)
    try:
        await asyncio.wait_for(bucket.acquire(0.0), 10)  # through the relay, with the password
        assert await dedupe.first("Ev0") and not await Dedupe(coord, "test:event", ttl=60.0).first("Ev0")
        await proxy.down()

        waiter = asyncio.ensure_future(bucket.acquire(0.0))
        await asyncio.sleep(1.0)
        assert not waiter.done()  # fail closed: no grant while the other replicas' spend is unknown
        assert not bucket.available()
        with pytest.raises(Unavailable):
            await coord.take("test:outage", 3, 60.0)
        with pytest.raises(Exception):  # noqa: B017 - /readyz names the type; any error means unready
            await coord.ping()
        assert await dedupe.first("Ev1")  # fail open: handled here rather than dropped
        assert not await dedupe.first("Ev1")  # and this process still remembers it

        await proxy.up()
        await asyncio.wait_for(waiter, 15)  # granted once Redis answers again
        assert bucket.granted == 2
    finally:
        await coord.aclose()
        with contextlib.suppress(Exception):
            await proxy.down()
    warnings = [r for r in caplog.records if r.name == "parley.coord" and "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # one clear line for the outage, not one per attempt
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert password not in caplog.text and user + ":" not in caplog.text


# --- budgets shared by replicas --------------------------------------------------------------------------


async def drain(buckets: list[TokenBucket], per_bucket: int, priorities: Iterable[float] = (0.0,)) -> list[float]:
    """Every bucket acquires ``per_bucket`` times, concurrently; the times of the grants (this clock)."""
    stamps: list[float] = []
    prios = list(priorities)

    async def one(bucket: TokenBucket, i: int) -> None:
        await bucket.acquire(prios[i % len(prios)])
        stamps.append(time.monotonic())

    await asyncio.wait_for(
        asyncio.gather(*(one(b, i) for b in buckets for i in range(per_bucket))), 30
    )
    return stamps


async def test_two_replicas_window_budgets_together_stay_within_one_limit(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    limit, window = 6, 0.4
    buckets = [WindowBudget(limit, window, name="w").share(c, "test:budget") for c in (a, b)]
    stamps = await drain(buckets, 12, priorities=(0.0, 1.0, 1.0))  # finals and progress updates
    assert len(stamps) == 24
    # The budget holds each slot 5% beyond the window; the platform's window is the nominal one.
    assert worst_window(stamps, window) <= limit
    assert all(bk.granted > 0 for bk in buckets)


async def test_a_window_take_can_be_paced_by_one_credit_bucket_for_every_replica(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    pace = (10.0, 3)  # 10 per second, 3 at once
    got = [(await c.take("test:paced", 100, 30.0, pace=pace)).granted for c in (a, b, a)]
    assert got == [True] * 3  # the burst, shared
    refused = await b.take("test:paced", 100, 30.0, pace=pace)
    assert not refused.granted and 0 < refused.wait <= 0.1 + 1e-3  # the window has room: the pace says no
    assert (await b.take("test:paced", 100, 30.0)).granted  # a final is not paced
    # The credit is spent only when the window grants: a full window leaves it for later.
    for c in (a, b):
        await c.take("test:full", 1, 30.0)
    full = await a.take("test:full", 1, 30.0, pace=(1.0, 1))
    assert not full.granted and full.wait > 1.0  # waits for the window, not the pace
    assert (await b.take("test:full2", 1, 30.0, pace=(1.0, 1))).granted  # another key: its own pace


async def test_slots_are_held_back_for_every_replicas_claims_together(pair) -> None:  # type: ignore[no-untyped-def]
    from core.coord import Claims

    a, b = pair
    # Replica "a" has 3 messages waiting for their finals; "b" has none and only sends progress.
    assert (await a.take("test:claims", 6, 30.0, claims=Claims("a", 3, 4, True))).granted
    taken = [(await b.take("test:claims", 6, 30.0, claims=Claims("b", 0, 4, True))).granted for _ in range(4)]
    assert taken == [True, True, False, False]  # 6 slots - a's 3 held back - the 1 a used
    # a's finals may use the slots held back for them.
    finals = [(await a.take("test:claims", 6, 30.0, claims=Claims("a", 3, 4, False))).granted for _ in range(3)]
    assert finals == [True, True, True]
    # The cap: never more than 4 held back, whatever the replicas claim together.
    await a.take("test:cap", 10, 30.0, claims=Claims("a", 9, 4, False))
    await b.take("test:cap", 10, 30.0, claims=Claims("b", 9, 4, False))
    grants = [(await b.take("test:cap", 10, 30.0, claims=Claims("b", 9, 4, True))).granted for _ in range(6)]
    assert grants == [True] * 4 + [False] * 2  # 10 - 2 used - 4 held back


async def test_two_replicas_progress_updates_together_keep_one_processs_pace(pair) -> None:  # type: ignore[no-untyped-def]
    """Each replica's own credit would let N replicas spend N times the window's sustained rate on
    progress updates early on, leaving the finals to queue behind a spent window."""
    a, b = pair
    limit, window = 40, 2.0
    buckets = [WindowBudget(limit, window, name="p").share(c, "test:pace") for c in (a, b)]
    stamps: list[float] = []

    async def progress(bucket: WindowBudget) -> None:
        while True:
            await bucket.acquire(1.0)
            stamps.append(time.monotonic())

    tasks = [asyncio.create_task(progress(bk)) for bk in buckets for _ in range(5)]
    await asyncio.sleep(0.3)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    one = buckets[0]
    # What one process's budget grants in 0.3 s: its credit (half the window's calls) plus the pace.
    allowed = one.credit_cap + 0.3 / one.pace + 1
    assert limit // 2 <= len(stamps) <= allowed < limit


async def test_a_429_paused_by_one_replica_holds_the_others_budget(redis_url: str) -> None:
    a, b = RedisCoordinator(redis_url), RedisCoordinator(redis_url)
    seen, other = (WindowBudget(5, 1.0).share(c, "test:pause") for c in (a, b))
    try:
        seen.pause(30.0)  # a 429 with Retry-After: 30 reached this replica
        await seen.sent()
        assert other.available()  # nothing told the other replica yet...
        waiter = asyncio.ensure_future(other.acquire(0.0))
        await asyncio.sleep(0.3)
        assert not waiter.done()  # ...until it asked the coordinator
        assert other.paused_until > other.clock() + 25 and not other.available()
        waiter.cancel()
    finally:
        await a.aclose()
        await b.aclose()


async def test_without_redis_nothing_is_shared_and_nothing_changes() -> None:
    local = LocalCoordinator()
    ws = WorkspaceBudgets().share(local, "T1")
    bot = ChannelBudgets().share(local)
    assert all(b.shared is None for b in ws.buckets.values()) and ws.post("C1").shared is None
    assert bot.bot.shared is None and bot.channel(1).shared is None
    assert ws["chat.update"].try_acquire(0.0)  # the synchronous fast path, as before


async def test_slack_budgets_are_shared_per_workspace_method_and_channel(redis_url: str) -> None:
    a, b = RedisCoordinator(redis_url), RedisCoordinator(redis_url)
    try:
        one, two = WorkspaceBudgets(window=0.5).share(a, "T1"), WorkspaceBudgets(window=0.5).share(b, "T1")
        assert one["chat.update"].shared == (a, "slack:T1:chat.update")
        assert one.post("C1").shared == (a, "slack:T1:post:C1")
        per_minute = one.limits["chat.update"]
        stamps = await drain([one["chat.update"], two["chat.update"]], per_minute, priorities=(0.0, 1.0))
        assert worst_window(stamps, 0.5) <= per_minute - 1  # Slack's tier, one call of margin
        # Another workspace has its own allowance, whatever this one spent.
        while (await a.take("slack:T1:chat.update", per_minute - 1, 0.525)).granted:
            pass
        assert (await b.take("slack:T2:chat.update", per_minute - 1, 0.525)).granted
    finally:
        await a.aclose()
        await b.aclose()


async def test_two_discord_processes_share_the_global_bucket_and_channel_buckets(redis_url: str) -> None:
    a, b = RedisCoordinator(redis_url), RedisCoordinator(redis_url)
    try:
        per_second = 100  # time compressed: 90/s sustained, a burst of 20
        rate, burst = per_second * 0.9, per_second // 5
        shared = [ChannelBudgets(global_per_second=per_second).share(c) for c in (a, b)]
        stamps = await drain([s.bot for s in shared], 60)
        bound = burst + rate * 0.5 + 2  # what one bucket grants in any half second (2: clock jitter)
        assert worst_window(stamps, 0.5) <= bound
        # The same two processes without Redis: each spends the whole bucket.
        alone = [ChannelBudgets(global_per_second=per_second) for _ in range(2)]
        assert worst_window(await drain([s.bot for s in alone], 60), 0.5) > bound

        # Per-channel buckets (5 writes per half second here) are shared too.
        channels = [ChannelBudgets(limit=5, window=0.5).share(c) for c in (a, b)]
        assert channels[0].channel(42).shared == (a, "discord:channel:42")
        stamps = await drain([c.channel(42) for c in channels], 10)
        assert worst_window(stamps, 0.5) <= 5
    finally:
        await a.aclose()
        await b.aclose()


# --- the front-ends: a delivery reaching two replicas is handled once ---------------------------------


def noting(first: Any, replica: int, decided: asyncio.Queue[tuple[int, bool]]) -> Any:
    async def wrapped(event_id: str | None) -> bool:
        answer = bool(await first(event_id))
        decided.put_nowait((replica, answer))
        return answer

    return wrapped


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "no-redis"])
async def test_a_slack_event_retried_to_another_replica_is_handled_once(
    shared: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    if shared:
        monkeypatch.setenv("PARLEY_REDIS_URL", request.getfixturevalue("redis_url"))
    async with FakeLLMServer() as llm:
        cfg = tmp_path / "p.toml"
        cfg.write_text(f'[providers.one]\nlabel = "one"\nbase_url = "{llm.base_url}"\nkey_env = "K_ONE"\n'
                       'default_model = "one-m"\n[providers.one.models."one-m"]\ninput = 1.0\noutput = 2.0\n')
        monkeypatch.setenv("PARLEY_CONFIG", str(cfg))
        monkeypatch.setenv("K_ONE", "k-" + secrets.token_hex(8))
        llm.scenarios["one-m"] = Scenario(text="Launch on Tuesday.")
        token = "xoxb-" + "-".join(secrets.token_hex(6) for _ in range(3))
        secret = secrets.token_hex(16)
        async with FakeSlackAPI(bot_token=token) as slack, aiohttp.ClientSession() as http:
            replicas: list[tuple[SlackFront, web.AppRunner, str]] = []
            decided: asyncio.Queue[tuple[int, bool]] = asyncio.Queue()
            try:
                for i in range(2):
                    services = build_services(Settings(db=tmp_path / f"replica{i}.db"))
                    front = SlackFront(services, AsyncWebClient(token=token, base_url=slack.base_url),
                                       signing_secret=secret)
                    await front.start()
                    runner = web.AppRunner(front.web_app())
                    await runner.setup()
                    site = web.TCPSite(runner, "127.0.0.1", 0)
                    await site.start()
                    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                    replicas.append((front, runner, f"http://127.0.0.1:{port}/slack/events"))
                    # Bolt acknowledges first and handles after: note each replica's decision.
                    front.dedupe.first = noting(front.dedupe.first, i, decided)  # type: ignore[method-assign]
                assert all(f.services.coord.shared is shared for f, _, _ in replicas)
                event = {"type": "app_mention", "user": "U1", "text": "<@UBOT> ask provider:one When?",
                         "ts": "1800000100.000100", "channel": "C2", "event_ts": "1800000100.000100"}
                body = json.dumps({"token": "legacy", "team_id": "T0TEST", "api_app_id": "A0TEST",
                                   "type": "event_callback", "event_id": "EvTwice", "event_time": int(time.time()),
                                   "authorizations": [{"team_id": "T0TEST", "user_id": "UBOT", "is_bot": True}],
                                   "event": event})
                # Slack's first delivery reaches one replica; its retry, the other.
                decisions = []
                for (_, _, url), retry in zip(replicas, (None, "1"), strict=True):
                    headers = {"Content-Type": "application/json", **sign(secret, body)}
                    if retry:
                        headers |= {"X-Slack-Retry-Num": retry, "X-Slack-Retry-Reason": "http_timeout"}
                    async with http.post(url, data=body, headers=headers) as r:
                        assert r.status == 200
                    decisions.append(await asyncio.wait_for(decided.get(), 10))
                for front, _, _ in replicas:
                    await front.idle()
                answers = [m for m in slack.thread("C2", "1800000100.000100") if "`one/" in m.text]
                spawned = [f.spawned for f, _, _ in replicas]
                # Each replica's Slack budgets for the workspace draw on the shared ones (or not).
                for front, _, _ in replicas:
                    assert (front.workspaces.get("T0TEST")["chat.update"].shared is not None) is shared
                if shared:
                    assert decisions == [(0, True), (1, False)]
                    assert spawned == [1, 0] and len(answers) == 1
                else:  # each process alone remembers only what it saw: the retry is answered again
                    assert decisions == [(0, True), (1, True)]
                    assert spawned == [1, 1] and len(answers) == 2
            finally:
                for front, runner, _ in replicas:
                    await front.shutdown()
                    await runner.cleanup()
                    await front.services.aclose()


async def test_a_discord_interaction_delivered_to_two_processes_is_handled_once(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARLEY_REDIS_URL", redis_url)
    fronts: list[DiscordFront] = []
    handled: list[tuple[int, int]] = []
    try:
        for i in range(2):
            services = build_services(Settings(db=tmp_path / f"shard{i}.db"))
            front = DiscordFront(services, discord.Client(intents=discord.Intents(guilds=True)))

            async def record(interaction: Any, i: int = i) -> None:
                handled.append((i, interaction.id))

            front._interaction = record  # type: ignore[method-assign]
            fronts.append(front)
        interaction = SimpleNamespace(id=1234567890123456789)  # what the handler reads before dispatching
        await asyncio.gather(*(f.on_interaction(interaction) for f in fronts))  # type: ignore[arg-type]
        await fronts[1].on_interaction(SimpleNamespace(id=1234567890123456789))  # type: ignore[arg-type]
        await fronts[1].on_interaction(SimpleNamespace(id=1234567890123456790))  # type: ignore[arg-type]
        for f in fronts:
            await f.idle()
        assert sorted(h[1] for h in handled) == [1234567890123456789, 1234567890123456790]
        # Both processes' global and channel buckets are the shared ones.
        assert all(f.budgets.bot.shared is not None and f.budgets.channel(7).shared is not None for f in fronts)
    finally:
        for f in fronts:
            await f.client.close()
            await f.services.aclose()
