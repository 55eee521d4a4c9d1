"""Three real `parley slack` replicas behind a round-robin proxy (one Request URL, as a load
balancer gives Slack), sharing PostgreSQL (PARLEY_DATABASE_URL) and Redis (PARLEY_REDIS_URL),
against a Slack fake that enforces Slack's per-workspace tier limits.

- 50 concurrent discussions: no 429, no duplicate message, no character lost;
- an event Slack retries to another replica is handled once;
- a replica killed with SIGKILL mid-stream: a surviving replica (no restart) marks its runs
  interrupted and edits its open messages, once.

Freshness against one process is a timing figure: it is measured in bench/replica_bench.py
(bench/results/replicas.json), not asserted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import psycopg
import pytest
from aiohttp import web
from yarl import URL

from bots.slack.recovery import INTERRUPTED, THREAD_INTERRUPTED
from tests.fakes.llm_server import FakeLLMServer, Scenario
from tests.fakes.proxy import RoundRobinProxy
from tests.fakes.slack_api import FakeSlackAPI, Message, sign
from tests.test_processes import ROOT, SlackProcess, base_env, free_port

EVENTS = "/slack/events"
#: Slack's published limits per method per workspace, calls per minute
#: (https://docs.slack.dev/apis/web-api/rate-limits: Tier 2 20+, Tier 3 50+, Tier 4 100+).
PUBLISHED = {
    "chat.update": 50,  # Tier 3
    "chat.startStream": 20,  # Tier 2
    "chat.stopStream": 20,  # Tier 2
    "chat.appendStream": 100,  # Tier 4
    "assistant.threads.setStatus": 50,  # "special": held to Tier 3 here
}
#: chat.postMessage: about one per second per channel, short bursts allowed.
POST_PER_CHANNEL = (2, 1.0)
#: An answer whose every word is numbered: any character lost, doubled or reordered shows.
ANSWER = " ".join(f"w{i:03d}" for i in range(120))
LABEL = "`one/one-m`"


def slack_fake(token: str) -> FakeSlackAPI:
    return FakeSlackAPI(bot_token=token, limits={m: (n, 60.0) for m, n in PUBLISHED.items()},
                        post_per_channel=POST_PER_CHANNEL)


@dataclass
class Replicas:
    llm: FakeLLMServer
    slack: FakeSlackAPI
    env: dict[str, str]
    apps: list[Replica]
    proxy: RoundRobinProxy
    http: aiohttp.ClientSession
    pg_url: str
    secrets: list[str] = field(default_factory=list)

    @property
    def secret(self) -> str:
        return self.env["SLACK_SIGNING_SECRET"]

    async def slash(self, channel: str, text: str, *, user: str = "U1") -> None:
        body = urlencode({
            "team_id": "T0TEST", "channel_id": channel, "user_id": user, "command": "/compare", "text": text,
            "api_app_id": "A0TEST", "response_url": self.slack.response_url, "trigger_id": "1.2.3",
        })
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(self.secret, body)}
        async with self.http.post(self.proxy.url + EVENTS, data=body, headers=headers) as r:
            assert r.status == 200 and await r.text() == ""

    async def event(self, body: str, *, retry: int = 0) -> int:
        headers = {"Content-Type": "application/json", **sign(self.secret, body)}
        if retry:
            headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
        async with self.http.post(self.proxy.url + EVENTS, data=body, headers=headers) as r:
            return r.status

    def thread(self, channel: str) -> list[Message]:
        parents = self.slack.parents(channel)
        return self.slack.thread(channel, parents[0].ts) if parents else []

    def answers(self, channel: str) -> list[Message]:
        return [m for m in self.thread(channel) if m.text.startswith(LABEL)]

    def finished(self, channel: str) -> bool:
        thread = self.thread(channel)
        return any("*Total*" in m.text for m in thread) and not any(m.streaming for m in thread)

    async def idle(self, within: float = 30.0) -> None:
        """Every live replica runs nothing (its /healthz says so)."""
        deadline = time.monotonic() + within
        for app in self.apps:
            if app.proc.poll() is not None:
                continue
            while True:
                async with self.http.get(f"http://127.0.0.1:{app.port}/healthz") as r:
                    if (await r.json()).get("running") == 0:
                        break
                assert time.monotonic() < deadline, "a replica is still running discussions"
                await asyncio.sleep(0.1)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg_url) as conn:
            return conn.execute(sql).fetchall()

    async def closed(self, within: float = 20.0) -> None:
        """The store has no open post left (the live replicas closed their bookkeeping)."""
        deadline = time.monotonic() + within
        while self.rows("select id from posts where open = 1"):
            assert time.monotonic() < deadline, self.rows("select ref from posts where open = 1")
            await asyncio.sleep(0.1)

    def logs(self) -> str:
        return "".join(app.log.read_text() for app in self.apps)

    def check_logs(self) -> None:
        text = self.logs()
        assert "Traceback" not in text, text[-4000:]
        assert not any(s in text for s in self.secrets)  # no token, signing secret or key in any log


class Replica(SlackProcess):
    """A `parley slack` process; with ``host``, as if on another machine: in a UTS namespace of its
    own with that host name, so that the others cannot see its process and must go by its lease."""

    def __init__(self, env: dict[str, str], log: Path, host: str | None = None) -> None:
        if host is None:
            super().__init__(env, log)
            return
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh",
             sys.executable, "-m", "bots.cli", "slack", "--port", str(self.port)],
            env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}{EVENTS}"


def other_hosts_possible() -> bool:
    """Whether a process can be given a host name of its own here (root, or user namespaces)."""
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0


@contextlib.asynccontextmanager
async def replicas(
    tmp_path: Path, pg_url: str, redis_url: str, n: int = 3, hosts: dict[int, str] | None = None
) -> AsyncIterator[Replicas]:
    async with FakeLLMServer() as llm:
        token = "xoxb-" + secrets.token_hex(12)
        async with slack_fake(token) as slack, aiohttp.ClientSession() as http:
            env = base_env(tmp_path, llm.base_url) | {
                "SLACK_BOT_TOKEN": token,
                "SLACK_SIGNING_SECRET": secrets.token_hex(16),
                "SLACK_API_URL": slack.base_url,
                "PARLEY_DATABASE_URL": pg_url,
                "PARLEY_REDIS_URL": redis_url,
                # Every replica admits on its own: the load here is the test's to choose.
                "PARLEY_MAX_RUNNING_PER_WORKSPACE": "0",
                "PARLEY_MAX_RUNNING_PER_USER": "0",
            }
            env.pop("PARLEY_DB")
            apps: list[Replica] = []
            try:
                for i in range(n):
                    apps.append(Replica(env, tmp_path / f"replica{i}.log", (hosts or {}).get(i)))
                for app in apps:
                    await app.ready(http)
                async with RoundRobinProxy([f"http://127.0.0.1:{a.port}" for a in apps]) as proxy:
                    yield Replicas(llm, slack, env, apps, proxy, http, pg_url,
                                   [token, env["SLACK_SIGNING_SECRET"], env["K_ONE"], env["K_TWO"]])
            finally:
                for app in apps:
                    app.stop()


def worst_window(times: list[float], window: float) -> int:
    """The most calls that fell in any sliding ``window`` seconds."""
    times = sorted(times)
    worst, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        worst = max(worst, hi - lo + 1)
    return worst


# --- the proxy itself -------------------------------------------------------------------------------


async def test_the_proxy_forwards_each_request_byte_exact_in_turn_or_where_it_is_told(tmp_path: Path) -> None:
    seen: list[tuple[int, str, str, list[tuple[str, str]], bytes]] = []

    def echo(i: int) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            seen.append((i, request.method, request.raw_path, list(request.headers.items()), body))
            return web.Response(status=201 + i, body=b"from %d:" % i + body,
                                headers={"X-Replica": str(i), "Content-Type": "application/octet-stream"})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    runners = []
    try:
        urls = []
        for i in range(3):
            runner = web.AppRunner(echo(i))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            urls.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")  # type: ignore[union-attr]
        # A body a re-encoding would change: form data with +, %-escapes, non-ASCII and a raw byte.
        body = b"text=a+b%20c%2Bd&x=%E2%9C%93&y=" + "é✓".encode() + b"\xff\r\n"
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign("s3cret", body.decode("latin-1")),
                   "X-Slack-Retry-Num": "1", "Connection": "keep-alive"}
        async with RoundRobinProxy(urls) as proxy, aiohttp.ClientSession() as http:
            got = []
            for _ in range(4):
                target = URL(f"{proxy.url}/slack/events?a=1&b=%2F", encoded=True)  # sent as written
                async with http.post(target, data=body, headers=headers) as r:
                    got.append((r.status, r.headers["X-Replica"], await r.read()))
            assert [g[:2] for g in got] == [(201, "0"), (202, "1"), (203, "2"), (201, "0")]
            assert all(g[2].endswith(b":" + body) for g in got)
            proxy.pin(2, 2)  # told where: the next two go to replica 2, then the turn resumes
            for _ in range(3):
                async with http.post(f"{proxy.url}/slack/events", data=body, headers=headers) as r:
                    assert r.status in (201, 202, 203)
            assert [s[0] for s in seen[4:]] == [2, 2, 1]
            # What each replica got is what was sent: method, path and query, body, and every header
            # a client sends end to end (hop-by-hop ones are the proxy's own, as HTTP says).
            for _, method, _, got_headers, got_body in seen:
                assert method == "POST" and got_body == body
                h = dict(got_headers)
                for name in ("Content-Type", "X-Slack-Signature", "X-Slack-Request-Timestamp", "X-Slack-Retry-Num"):
                    assert h[name] == headers[name]
            assert seen[0][2] == "/slack/events?a=1&b=%2F"
            # A replica that refuses connections (killed) is skipped, as a health-checked balancer does.
            await runners[0].cleanup()
            before = len(seen)
            statuses = []
            for _ in range(3):
                async with http.post(f"{proxy.url}/slack/events", data=body, headers=headers) as r:
                    statuses.append(r.status)
            assert 201 not in statuses and len(seen) == before + 3
            assert [f.replica for f in proxy.log if f.status == 502] == [0]
    finally:
        for runner in runners:
            await runner.cleanup()


# --- three replicas -----------------------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_fifty_discussions_on_three_replicas_stay_within_slacks_limits_and_lose_nothing(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    n = 50
    channels = [f"C{i:03d}" for i in range(n)]
    async with replicas(tmp_path, pg_url, redis_url) as rig:
        rig.llm.default = Scenario(text=ANSWER, chunk_chars=10, chunk_delay=0.05)  # 60 chunks over 3 s
        await asyncio.gather(*(rig.slash(c, "provider:one Go?", user=f"U{i}") for i, c in enumerate(channels)))
        assert Counter(f.replica for f in rig.proxy.log) == {0: 17, 1: 17, 2: 16}  # each replica its turn
        await rig.slack.wait_for(lambda: all(rig.finished(c) for c in channels), within=240)
        await rig.idle()
        await rig.closed()
        rig.check_logs()
        rows = rig.rows("select status, owner from discussions")
    calls = rig.slack.calls
    assert [(c.method, c.error) for c in calls if c.status == 429] == []
    # No minute held more calls of a method than Slack allows: the replicas shared one budget per
    # workspace (three budgets of their own are refused: 429s) …
    ok = {m: [c.t for c in calls if c.method == m and c.status == 200] for m in PUBLISHED}
    worst = {m: worst_window(ts, 60.0) for m, ts in ok.items() if ts}
    assert all(worst[m] <= PUBLISHED[m] for m in worst), worst
    # … and the load needed more than a minute's worth of some method: the limits paced it.
    assert any(len(ts) > PUBLISHED[m] for m, ts in ok.items()), {m: len(ts) for m, ts in ok.items()}
    print("busiest minute per method:", worst, "calls:", {m: len(ts) for m, ts in ok.items()})
    for c in channels:
        assert len(rig.slack.parents(c)) == 1, c
        # One reply per discussion, never two; under load it may continue over several messages
        # (each under the reply's label, the earlier ones ending with " …"): every character, in order.
        parts = rig.answers(c)
        assert parts and all(m.text.startswith(f"{LABEL}\n\n") for m in parts), c
        shown = "".join(m.text.split("\n\n", 1)[1].removesuffix(" …") for m in parts)
        assert shown == ANSWER, (c, len(parts), shown[-200:])
        assert sum("*Total*" in m.text for m in rig.thread(c)) == 1
        assert not any("Interrupted" in m.text for m in rig.thread(c))
    assert len(rig.llm.requests) == n  # each discussion ran once
    assert sorted(s for s, _ in rows) == ["finished"] * n
    assert len({o for _, o in rows}) == 3  # each replica ran its share
    assert not rig.slack.invalid


@pytest.mark.timeout(120)
async def test_an_event_slack_retries_to_other_replicas_runs_once(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    async with replicas(tmp_path, pg_url, redis_url) as rig:
        rig.llm.default = Scenario(text=ANSWER, chunk_chars=20, chunk_delay=0.02)
        mention_ts = "1800000100.000100"
        event = {"type": "app_mention", "user": "U1", "text": "<@UBOT> ask provider:one When?",
                 "ts": mention_ts, "channel": "C7", "event_ts": mention_ts}
        body = json.dumps({"token": "legacy", "team_id": "T0TEST", "api_app_id": "A0TEST",
                           "type": "event_callback", "event_id": "Ev0RETRIED", "event_time": int(time.time()),
                           "authorizations": [{"team_id": "T0TEST", "user_id": "UBOT", "is_bot": True}],
                           "event": event})
        rig.proxy.pin(0, 1, 2)
        assert await rig.event(body) == 200  # Slack's delivery reaches replica 0 …
        # … and, taking the answer for lost, Slack retries it: the retries reach the two others at once.
        assert await asyncio.gather(rig.event(body, retry=1), rig.event(body, retry=2)) == [200, 200]
        await rig.slack.wait_for(
            lambda: any("`one/one-m`" in m.text and not m.streaming for m in rig.slack.thread("C7", mention_ts)),
            within=30)
        await rig.idle()
        await rig.closed()
        rig.check_logs()
        rows = rig.rows("select status from discussions")
    # The delivery and its two retries reached the three replicas (the retries in either order).
    got = [(f.replica, f.status, f.headers.get("X-Slack-Retry-Num")) for f in rig.proxy.log]
    assert got[0] == (0, 200, None) and sorted(got[1:]) == [(1, 200, "1"), (2, 200, "2")]
    answers = [m for m in rig.slack.thread("C7", mention_ts) if m.text.startswith(LABEL)]
    assert len(answers) == 1 and answers[0].text == f"{LABEL}\n\n{ANSWER}"
    assert len(rig.llm.requests) == 1 and rows == [("finished",)]
    assert [c for c in rig.slack.calls if c.status == 429] == []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("where", ["same-host", "other-host"])
async def test_a_replica_killed_mid_stream_has_its_runs_taken_over_by_a_survivor(
    where: str, tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    """On the same host the survivors see that the victim's process is gone; on another host
    (its own host name) only its heartbeat tells, and they take over once its lease ran out."""
    if where == "other-host" and not other_hosts_possible():
        pytest.skip("giving a process a host name of its own needs unshare --uts (root or user namespaces)")
    lease = float(base_env(tmp_path, "http://127.0.0.1:9/v1")["PARLEY_LEASE_SECONDS"])
    channels = [f"C{i}" for i in range(6)]
    hosts = {0: "parley-elsewhere"} if where == "other-host" else None
    async with replicas(tmp_path, pg_url, redis_url, hosts=hosts) as rig:
        rig.llm.default = Scenario(text="steady " * 300, chunk_chars=7, chunk_delay=0.03)  # ~9 s per answer
        for c in channels:  # round robin: C0 and C3 on replica 0, C1 and C4 on 1, C2 and C5 on 2
            await rig.slash(c, "provider:one Long?")
        by_replica = {c: f.replica for c, f in zip(channels, rig.proxy.log, strict=True)}
        victim = rig.apps[0]
        theirs = [c for c in channels if by_replica[c] == 0]
        ours = [c for c in channels if by_replica[c] != 0]
        assert theirs == ["C0", "C3"]
        await rig.slack.wait_for(lambda: all(
            any("steady steady" in m.text for m in rig.answers(c)) for c in channels), within=30)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        killed = time.monotonic()
        # No process starts: a surviving replica notices the lease ran out and takes over.
        await rig.slack.wait_for(lambda: all(
            any(THREAD_INTERRUPTED in m.text for m in rig.thread(c)) for c in theirs), within=10 * lease)
        taken_over = time.monotonic() - killed
        await rig.slack.wait_for(lambda: all(rig.finished(c) for c in ours), within=60)
        await rig.idle()
        await rig.closed()
        rig.check_logs()
        discussions = rig.rows("select id, status from discussions")
        turns = rig.rows("select d.status, t.status, t.error_kind from turns t join discussions d "
                         "on d.id = t.discussion_id")
    print(f"{where}: taken over {taken_over:.1f}s after the kill (lease {lease:g}s)")
    for c in theirs:
        thread = rig.thread(c)
        [answer] = rig.answers(c)
        assert INTERRUPTED in answer.text and "steady steady" in answer.text  # its text kept, then the note
        assert not answer.streaming
        assert sum(THREAD_INTERRUPTED in m.text for m in thread) == 1  # claimed by one survivor only
        assert not any("*Total*" in m.text for m in thread)
    for c in ours:
        [answer] = rig.answers(c)
        assert answer.text.removeprefix(f"{LABEL}\n\n").strip() == ("steady " * 300).strip()
        assert not any("Interrupted" in m.text for m in rig.thread(c))
    assert sorted(s for _, s in discussions) == ["finished"] * 4 + ["interrupted"] * 2
    assert sorted(turns) == [("finished", "finished", None)] * 4 + [("interrupted", "failed", "interrupted")] * 2
    assert [c for c in rig.slack.calls if c.status == 429] == []
