"""Slash-command acknowledgement benchmark: time from a signed request to Slack's HTTP 200.

    python -m bench.ack_bench            # SQLite and PostgreSQL
    python -m bench.ack_bench --quick    # SQLite only, 3 runs (a look while working)

Slack wants the HTTP 200 of a slash command within 3,000 ms ("if you're unable to
immediately respond to a command within 3000 milliseconds, use the specific response_url";
Bolt's guide: "Your app has to respond to the request within 3 seconds by ack() method").
Issue 15's target is stricter: p99 < 100 ms with 200 concurrent requests, policy and
budget checks included.

The app is the real one: :class:`bots.slack.app.SlackFront` on bolt's ``AsyncApp``, served
by :func:`bots.slack.http.web_app` through an aiohttp ``AppRunner`` as ``parley slack``
serves it (access log on, logging configured by :func:`core.logs.configure`, written to a
file). Parley runs in this process, pinned to core 0; the fake Slack Web API
(tests/fakes/slack_api.py), the fake LLM (tests/fakes/llm_server.py) and the load client
each run in a process of their own pinned to the other core, as bench/core_bench.py pins
them; PostgreSQL, when it is the store, is started on that core too.

Governance is on, so every check runs: 30 policy rules in the workspace (an allow-list of
providers, denied models and personas, channel rules, rules for people and roles), budget
caps for the workspace, every person (``user:*``) and one channel in four, with
PARLEY_SECRET_KEY set (the own-key lookup runs). Every admitted request reserves its worst
case in one write transaction. PARLEY_MAX_RUNNING_PER_WORKSPACE is raised to 1,000 so that
all 200 requests of a burst are admitted (at the default, 20, the rest are refused
"busy" without a reservation, which is cheaper).

A burst is N signed slash commands sent at once by the client process, each over a kept-alive
connection of its own opened before the burst (as many machines would send them; a client
library's own queueing is kept out: the request's bytes are written whole, ready-made), a
third ``/compare providers:one,two personas:…`` and the rest ``/ask``, each from its own
person in its own channel. Each request's time is from the moment its bytes are written to
the moment the HTTP 200 and its body are read. After the ack,
each discussion runs as it would (parent message, a streamed answer: first token after
0.5 s, in Slack through Parley's budgets, whose per-minute windows are compressed ×60 so
each burst's discussions finish in seconds; nothing before the ack touches them), and it
competes with the acks still to come for the same event loop, as in production. The next
burst starts when every discussion has ended and every write is in.

Cells: 1, 50 and 200 at once, ``RUNS`` runs each, cells interleaved run by run; on SQLite
and on PostgreSQL (a fresh database). p50/p95/p99 per run; the summary gives the median
over runs with the range. The machine is shared: for every burst the benchmark records what
other processes took of Parley's core while the acks were due (from /proc), and the garbage
collector's pauses in that time.

Then two more 200-bursts per store say where the time goes. In the first, each stage is
timed on the event loop's thread in CPU time, each without the stages it calls (a coroutine
only while it runs): the signature check, bolt's request object, bolt's dispatch (middleware,
listener matching, the handler's glue and the ack), parse, admission, policy, panel and
defaults, own keys, the estimate, the reservation's event-loop side, aiohttp's access log line,
the discussions after their ack, and the rest; each reservation's write is timed on the writer
thread (its wait in the writer's queue, its transaction). The second runs under cProfile (CPU
time, both threads) for the functions that cost most. Writes bench/results/ack.json
(``--before FILE`` keeps an earlier run's figures beside the new ones).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import multiprocessing as mp
import os
import pstats
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RUNS = 5
CELLS = (1, 50, 200)
TARGET_P99_MS = 100.0
SLACK_LIMIT_MS = 3000.0
SCALE = 60.0  # Slack's per-minute windows after the ack, compressed (a minute is a second)
PROVIDERS = ("one", "two", "three")
TEAM = "T0TEST"
WORKSPACE = f"slack:{TEAM}"
#: What each provider streams: the first token after half a second, then five chunks.
ANSWER: dict[str, Any] = {"text": "A short answer, streamed in a few chunks. " * 3, "chunk_chars": 26,
          "first_token_delay": 0.5, "chunk_delay": 0.02}
PERSONAS = ("riley", "morgan")


def _pin(last: bool) -> None:
    """Parley on core 0, everything else on the last core (when there are two or more)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {(os.cpu_count() or 2) - 1} if last else {0})


# --- the other processes -----------------------------------------------------------------------
def _serve_slack(port_q: Any, token: str) -> None:
    _pin(last=True)
    from tests.fakes.slack_api import FakeSlackAPI

    async def go() -> None:
        fake = FakeSlackAPI(bot_token=token)
        await fake.start()
        port_q.put(fake.port)
        await asyncio.Event().wait()

    asyncio.run(go())


def _serve_llm(url_q: Any) -> None:
    _pin(last=True)
    from tests.fakes.llm_server import FakeLLMServer, Scenario

    async def go() -> None:
        server = FakeLLMServer()
        server.default = Scenario(**ANSWER)
        for p in PROVIDERS:
            server.scenarios[f"{p}-m"] = Scenario(**ANSWER)
        await server.start()
        url_q.put(server.base_url)
        await asyncio.Event().wait()

    asyncio.run(go())


class _Conn:
    """One kept-alive HTTP/1.1 connection of the load client: a request's bytes written whole,
    its response read to the end of its body (Content-Length, as aiohttp answers)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def exchange(self, request: bytes) -> tuple[float, float, int, bytes]:
        await self.open()
        assert self.reader is not None and self.writer is not None
        t0 = time.perf_counter()
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                self.writer = None
        body = await self.reader.readexactly(length) if length else b""
        return t0, time.perf_counter(), status, body


def _client(conn: Any, url: str, secret: str, response_url: str) -> None:
    """The load: bursts of signed slash commands, each timed from the moment its bytes are
    written to the moment its whole response is read. Each request has a kept-alive
    connection of its own, opened before the burst (Slack's requests come from many machines:
    a client library's own queueing in one process is not part of what is measured)."""
    _pin(last=True)
    from urllib.parse import urlsplit

    from tests.fakes.slack_api import sign

    where = urlsplit(url)
    host, port, path = where.hostname or "127.0.0.1", where.port or 80, where.path

    def body_of(i: int, tag: str) -> str:
        if i % 3 == 0:
            command, text = "/compare", f"providers:one,two personas:{PERSONAS[i % 2]} Where should we launch first? ({tag})"
        else:
            command, text = "/ask", f"How do we price the team plan? ({tag} {i})"
        return urlencode({
            "token": "legacy", "team_id": TEAM, "team_domain": "parley-bench", "channel_id": f"C{i:04d}",
            "channel_name": f"room-{i}", "user_id": f"U{tag}{i:04d}", "user_name": f"person{i}",
            "command": command, "text": text, "api_app_id": "A0BENCH", "response_url": response_url,
            "trigger_id": f"1.{i}.{tag}",
        })

    def request_of(body: str) -> bytes:
        headers = {"Host": f"{host}:{port}", "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
                   "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json,*/*",
                   "Content-Length": str(len(body.encode())), **sign(secret, body)}
        head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        return head.encode() + body.encode()

    pool: list[_Conn] = []

    async def burst(n: int, tag: str) -> dict[str, Any]:
        while len(pool) < n:
            pool.append(_Conn(host, port))
        await asyncio.gather(*(c.open() for c in pool[:n]))
        requests = [request_of(body_of(i, tag)) for i in range(n)]
        start = time.perf_counter()
        done = await asyncio.gather(*(pool[i].exchange(requests[i]) for i in range(n)))
        return {
            "window": (start, max(t1 for _, t1, _, _ in done)),  # CLOCK_MONOTONIC: the same in every process
            "ms": [(t1 - t0) * 1000 for t0, t1, _, _ in done],
            "from_burst_ms": [(t1 - start) * 1000 for _, t1, _, _ in done],
            "send_spread_ms": (max(t0 for t0, _, _, _ in done) - start) * 1000,
            "status": [s for _, _, s, _ in done],
            "refused": [b.decode()[:200] for _, _, s, b in done if s == 200 and b][:3],
            "admitted": sum(1 for _, _, s, b in done if s == 200 and not b),
        }

    async def go() -> None:
        while True:
            msg = await asyncio.to_thread(conn.recv)
            if msg is None:
                return
            n, tag = msg
            conn.send(await burst(n, tag))

    asyncio.run(go())


@contextlib.contextmanager
def _process(target: Any, *args: Any) -> Iterator[Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=target, args=(q, *args), daemon=True)
    proc.start()
    try:
        yield q.get(timeout=60)
    finally:
        proc.terminate()
        proc.join(5)


# --- Parley, in this process ---------------------------------------------------------------------
def _config(base_url: str, tmp: Path) -> Path:
    path = tmp / "bench.toml"
    path.write_text("".join(
        f'[providers.{p}]\nlabel = "{p}"\nbase_url = "{base_url}"\nkey_env = "ACK_KEY_{p.upper()}"\n'
        f'default_model = "{p}-m"\n[providers.{p}.models."{p}-m"]\ninput = 1.0\noutput = 2.0\n'
        for p in PROVIDERS
    ))
    return path


def _rule(effect: str, dim: str, pattern: str, channel: str = "", subjects: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"channel": channel, "effect": effect, "dimension": dim, "pattern": pattern, "subjects": list(subjects)}


def policy_rules() -> list[dict[str, Any]]:
    """Thirty rules of the kinds an admin writes; none refuses the bench's requests."""
    rules = [
        _rule("allow", "providers", "one"), _rule("allow", "providers", "two"),  # an allow-list
        _rule("deny", "models", "one/legacy-*"), _rule("deny", "models", "two/preview-*"),
        _rule("deny", "personas", "tomas"), _rule("deny", "personas", "intern-*"),
        _rule("allow", "providers", "three", subjects=("role:staff",)),
        _rule("deny", "commands", "consensus", channel="C9001"),
    ]
    for k in range(22):  # channel rules and rules for particular people, elsewhere
        rules.append(_rule("deny", "models", f"one/old-{k}", channel=f"C{9100 + k}"))
    return rules


async def _govern(services: Any) -> None:
    from core.governance.storage import Cap

    db = services.governance.db
    await db.add_rules(WORKSPACE, "Uadmin", policy_rules())
    caps = [Cap("workspace", "", 100_000.0, 1_000_000.0, 90), Cap("user", "*", 1_000.0, 10_000.0, 90)]
    caps += [Cap("channel", f"C{i:04d}", 5_000.0, 50_000.0, 90) for i in range(0, 200, 4)]
    for cap in caps:
        await db.set_cap(WORKSPACE, "Uadmin", cap)


def _env(base_url: str, tmp: Path, database_url: str | None) -> None:
    os.environ.update(
        PARLEY_CONFIG=str(_config(base_url, tmp)),
        PARLEY_DB=str(tmp / "ack.db"),
        PARLEY_DEFAULT_PROVIDER="one",
        PARLEY_MAX_RUNNING_PER_WORKSPACE="1000",
        PARLEY_SECRET_KEY=secrets.token_urlsafe(32),
        **{f"ACK_KEY_{p.upper()}": "k-" + secrets.token_hex(8) for p in PROVIDERS},
    )
    os.environ.pop("PARLEY_DATABASE_URL", None)
    if database_url:
        os.environ["PARLEY_DATABASE_URL"] = database_url


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return 0.0
    k = (len(s) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


class GCPauses:
    """The cyclic garbage collector's pauses in this process (every one stops the event loop)."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float, int]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.spans.append((self._start, time.perf_counter(), info["generation"]))
            del self.spans[:-10_000]

    def within(self, start: float, end: float) -> dict[str, float]:
        """Pauses that began while the acks were due: how many, their total and the longest (ms)."""
        inside = [(e - s) * 1000 for s, e, _ in self.spans if start <= s <= end]
        return {"count": len(inside), "total_ms": round(sum(inside), 2), "max_ms": round(max(inside, default=0), 2)}


GC_PAUSES = GCPauses()


def _core_use() -> tuple[int, int]:
    """(core 0's busy clock ticks, this process's clock ticks) so far, from /proc: the
    difference over a burst is what other processes took of Parley's core meanwhile."""
    try:
        with open("/proc/stat") as f:
            cpu0 = next(line for line in f if line.startswith("cpu0 ")).split()[1:]
        busy = sum(int(v) for i, v in enumerate(cpu0) if i not in (3, 4))  # not idle, not iowait
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return busy, int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, StopIteration, IndexError, ValueError):
        return 0, 0


class Stack:
    """One store's Parley: services, the Slack front-end, its HTTP site, and the client."""

    def __init__(self, services: Any, front: Any, runner: Any, client: Any, log_path: Path) -> None:
        self.services, self.front, self.runner, self.client, self.log_path = services, front, runner, client, log_path
        self.bursts = 0

    async def burst(self, n: int) -> dict[str, Any]:
        self.bursts += 1
        before = self.front.spawned
        use0 = _core_use()
        self.client.send((n, f"{self.bursts:03d}"))
        got = await asyncio.to_thread(self.client.recv)
        use1 = _core_use()
        got["core0_ticks"] = use1[0] - use0[0]  # core 0 busy, everyone
        got["parley_ticks"] = use1[1] - use0[1]  # this process (every thread, all on core 0)
        got["gc"] = GC_PAUSES.within(*got["window"])
        # Every discussion of this burst to its end, and every write in, before the next.
        await self.front.idle(before + got["admitted"], within=120)
        await self.services.store.settled()
        return got


@contextlib.asynccontextmanager
async def stack(base_url: str, slack_port: int, token: str, tmp: Path, database_url: str | None,
                ) -> Any:
    from aiohttp import web
    from slack_sdk.web.async_client import AsyncWebClient

    from bots.slack.app import SlackFront
    from bots.slack.budgets import POST_PER_CHANNEL_PER_SECOND, WorkspaceBudgets
    from core import logs
    from core.config import Settings
    from core.services import build_services

    _env(base_url, tmp, database_url)
    log_path = tmp / f"parley-{'pg' if database_url else 'sqlite'}.log"
    logs.configure("text", logging.INFO)
    handler = logging.getLogger().handlers[0]
    stream = log_path.open("a")  # closed when the stack is
    handler.setStream(stream)  # type: ignore[attr-defined]
    services = build_services(Settings())
    await _govern(services)
    client = AsyncWebClient(token=token, base_url=f"http://127.0.0.1:{slack_port}/api/")
    secret = secrets.token_hex(16)
    front = SlackFront(
        services, client, signing_secret=secret,
        budgets=lambda: WorkspaceBudgets(window=60.0 / SCALE, post_rate=POST_PER_CHANNEL_PER_SECOND * SCALE),
    )
    await front.start()
    runner = web.AppRunner(front.web_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_client, args=(theirs, f"http://127.0.0.1:{port}/slack/events", secret,
                                             f"http://127.0.0.1:{slack_port}/hooks/response"), daemon=True)
    proc.start()
    st = Stack(services, front, runner, mine, log_path)
    try:
        yield st
    finally:
        mine.send(None)
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
        await front.shutdown()
        await runner.cleanup()
        await services.aclose()
        stream.close()


def _summary_of(run: dict[str, Any]) -> dict[str, Any]:
    ms = run["ms"]
    return {
        "p50": round(_pct(ms, 0.50), 2), "p95": round(_pct(ms, 0.95), 2), "p99": round(_pct(ms, 0.99), 2),
        "max": round(max(ms), 2), "last_from_burst_ms": round(max(run["from_burst_ms"]), 2),
        "send_spread_ms": round(run["send_spread_ms"], 2), "admitted": run["admitted"],
        "non_200": sum(1 for s in run["status"] if s != 200), "refused": run["refused"],
        "core0_ticks": run.get("core0_ticks", 0), "parley_ticks": run.get("parley_ticks", 0),
        "gc_in_ack_window": run.get("gc", {}),
    }


# --- the profile -----------------------------------------------------------------------------------
class StageClock:
    """Exclusive time per stage on the event loop's thread: a stage's own running time, less
    that of the stages it calls. A coroutine counts only while it runs (each step between two
    suspensions), so time spent waiting (for the writer thread, for I/O) is not counted. Time
    is the thread's CPU time, so that moments the machine gives to other processes (others
    share it) are not counted either."""

    def __init__(self) -> None:
        self.stack: list[list[Any]] = []
        self.acc: dict[str, float] = {}

    def enter(self, stage: str) -> None:
        now = time.thread_time()
        if self.stack:
            top = self.stack[-1]
            self.acc[top[0]] = self.acc.get(top[0], 0.0) + now - top[1]
        self.stack.append([stage, now])

    def exit(self) -> None:
        now = time.thread_time()
        stage, since = self.stack.pop()
        self.acc[stage] = self.acc.get(stage, 0.0) + now - since
        if self.stack:
            self.stack[-1][1] = now


class _Timed:
    """An awaitable running ``coro`` step by step, each step timed as ``stage``."""

    __slots__ = ("clock", "coro", "stage")

    def __init__(self, clock: StageClock, coro: Any, stage: str) -> None:
        self.clock, self.coro, self.stage = clock, coro, stage

    def __await__(self) -> Any:
        value: Any = None
        error: BaseException | None = None
        while True:
            self.clock.enter(self.stage)
            try:
                step = self.coro.send(value) if error is None else self.coro.throw(error)
            except StopIteration as done:
                self.clock.exit()
                return done.value
            except BaseException:
                self.clock.exit()
                raise
            self.clock.exit()
            try:
                value, error = (yield step), None
            except BaseException as e:  # noqa: BLE001 - passed on to the coroutine (cancellation too)
                value, error = None, e


def _targets() -> list[tuple[Any, str, str, bool]]:
    """(owner, attribute, stage, is a coroutine function) for every stage measured."""
    import slack_bolt.app.async_app as bolt_app
    from aiohttp.web_log import AccessLogger

    import bots.slack.app as slack_app
    import bots.slack.http as slack_http
    import core.governance as gov
    from core.governance.storage import GovernanceStore
    from core.plan import Planner
    from core.threads import Admission

    g = gov.Governance
    return [
        (AccessLogger, "log", "aiohttp access log line", False),
        (slack_http, "AsyncBoltRequest", "bolt: request object (form parsed)", False),
        (slack_http, "_signed", "signature check", False),
        (bolt_app.AsyncApp, "async_dispatch", "bolt: dispatch, middleware, listener matching, ack", True),
        (slack_http, "to_aiohttp_response", "bolt: aiohttp response", True),
        (slack_app, "parse", "parse", False),
        (slack_app, "parse_line", "parse", False),
        (Admission, "enter", "admission (per workspace and person)", False),
        (g, "admit", "governance: admit (glue)", True),
        (g, "fresh_view", "governance: workspace view (version read)", True),
        (g, "check_command", "policy", False),
        (g, "check_panelist", "policy", False),
        (g, "check_model", "policy", False),
        (g, "resolve", "panel and channel defaults", False),
        (Planner, "panel", "panel and channel defaults", False),
        (g, "own_keys", "own keys", False),
        (gov, "worst_case", "estimate", False),
        (GovernanceStore, "reserve", "reservation (event-loop side)", True),
        (slack_app.SlackFront, "_from_command", "after the ack: the discussions", True),
    ]


@contextlib.contextmanager
def instrumented(clock: StageClock) -> Iterator[None]:
    undo = []
    for owner, attr, stage, is_async in _targets():
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)

        def wrap(fn: Any = original, stage: str = stage, is_async: bool = is_async) -> Any:
            if is_async:
                def timed_async(*a: Any, **kw: Any) -> Any:
                    return _Timed(clock, fn(*a, **kw), stage)
                return timed_async

            def timed(*a: Any, **kw: Any) -> Any:
                clock.enter(stage)
                try:
                    return fn(*a, **kw)
                finally:
                    clock.exit()
            return timed

        setattr(owner, attr, wrap())
        undo.append((owner, attr, original))
    try:
        yield
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)


@contextlib.contextmanager
def reservation_trips(writer: Any) -> Iterator[list[tuple[float, float, float]]]:
    """(queued, started, ended) of every reservation's write: its wait in the writer's queue
    and its transaction on the writer thread."""
    from core.governance import storage

    trips: list[tuple[float, float, float]] = []
    original_acall = writer.acall
    original_reserve = storage.GovernanceStore.reserve

    async def timed_acall(fn: Any, *, urgent: bool = False) -> Any:
        queued = time.perf_counter()
        mark: list[float] = []

        def wrapped(db: Any) -> Any:
            mark.append(time.perf_counter())
            try:
                return fn(db)
            finally:
                mark.append(time.perf_counter())

        try:
            return await original_acall(wrapped, urgent=urgent)
        finally:
            if len(mark) >= 2:
                trips.append((queued, mark[0], mark[-1]))

    async def reserve(self: Any, **kw: Any) -> Any:
        writer.acall = timed_acall
        try:
            return await original_reserve(self, **kw)
        finally:
            writer.acall = original_acall

    storage.GovernanceStore.reserve = reserve  # type: ignore[method-assign]
    try:
        yield trips
    finally:
        storage.GovernanceStore.reserve = original_reserve  # type: ignore[method-assign]
        writer.acall = original_acall


def _ms_pcts(xs: list[float]) -> dict[str, float]:
    return {"p50": round(_pct(xs, 0.5), 3), "p99": round(_pct(xs, 0.99), 3), "max": round(max(xs, default=0), 3)}


async def profiled_burst(st: Stack, n: int) -> dict[str, Any]:
    """Two more bursts: one with every stage timed (exclusive time on the loop's thread) and
    every reservation's trip through the writer timed; one under cProfile (both threads) for
    the functions that cost most."""
    writer = st.services.store.writer
    clock = StageClock()
    w0 = writer.call(lambda db: time.thread_time())
    c0 = time.thread_time()
    with instrumented(clock), reservation_trips(writer) as trips:
        t0 = time.perf_counter()
        got = await st.burst(n)
        wall = time.perf_counter() - t0
    loop_cpu = time.thread_time() - c0
    writer_cpu = writer.call(lambda db: time.thread_time()) - w0
    named = sum(clock.acc.values())
    stages = {k: round(v * 1000, 2) for k, v in sorted(clock.acc.items(), key=lambda kv: -kv[1])}
    stages["the rest on the loop (aiohttp, asyncio, logging, Slack and LLM clients)"] = round(
        (loop_cpu - named) * 1000, 2)
    # cProfile: what costs most, on the loop and on the writer thread
    wprof, prof = cProfile.Profile(time.thread_time), cProfile.Profile(time.thread_time)  # CPU, not wall time
    writer.call(lambda db: wprof.enable())
    prof.enable()
    try:
        await st.burst(n)
    finally:
        prof.disable()
        writer.call(lambda db: wprof.disable())
    return {
        "n": n,
        "burst_wall_s": round(wall, 3),
        "acks_done_within_ms": round(max(got["from_burst_ms"]), 1),
        "p99_ms": round(_pct(got["ms"], 0.99), 2),
        "loop_cpu_ms": round(loop_cpu * 1000, 1),
        "writer_cpu_ms": round(writer_cpu * 1000, 1),
        "loop_stages_ms": stages,
        "per_request_ms": {k: round(v / n, 3) for k, v in stages.items()},
        "reservations": len(trips),
        "reservation_tx_ms": _ms_pcts([(e - s) * 1000 for _, s, e in trips]),
        "reservation_queue_wait_ms": _ms_pcts([(s - q) * 1000 for q, s, _ in trips]),
        "named_in_cprofile": _named(pstats.Stats(prof), n),
        "top_functions_loop": io_top(pstats.Stats(prof), 25),
        "top_functions_writer": io_top(pstats.Stats(wprof), 12),
    }


#: Functions of the libraries around Parley whose cost the report names (cumulative, under cProfile,
#: so several times their cost without it).
NAMED = {
    "Slack Web API calls after the ack (slack_sdk, per request)": ("slack_sdk/web/async_internal_utils.py",
                                                                   "_request_with_session"),
    "new TCP connections (socket.connect, count per request)": ("~", "<method 'connect' of '_socket.socket' objects>"),
}


def _named(stats: pstats.Stats, n: int) -> dict[str, float]:
    raw = stats.stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for label, (frag, name) in NAMED.items():
        rows = [v for (file, _, fn), v in raw.items() if fn == name and (file.endswith(frag) or frag == "~")]
        if label.startswith("new TCP"):
            out[label] = round(sum(v[1] for v in rows) / n, 2)
        else:
            out[label] = round(sum(v[3] for v in rows) * 1000 / n, 3)
    return out


def _idle(func: tuple[str, int, str]) -> bool:
    """Waiting, not working: the loop's poll for I/O, a thread's wait on a lock or a queue."""
    file, _, name = func
    return (name in ("<method 'poll' of 'select.epoll' objects>", "<method 'acquire' of '_thread.lock' objects>")
            or (file.endswith("threading.py") and name == "wait"))


def io_top(stats: pstats.Stats, k: int) -> list[str]:
    raw = stats.stats  # type: ignore[attr-defined]
    rows = sorted(((f, v) for f, v in raw.items() if not _idle(f)), key=lambda kv: -kv[1][2])[:k]
    out = []
    for (file, line, name), (_, calls, tt, ct, _) in rows:
        short = file.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        out.append(f"{tt * 1000:8.1f} ms own {ct * 1000:8.1f} ms cum {calls:7d}× {short}:{line} {name}")
    return out


# --- the whole benchmark ---------------------------------------------------------------------------
async def run_store(kind: str, base_url: str, slack_port: int, token: str, runs: int,
                    database_url: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with stack(base_url, slack_port, token, Path(tmp), database_url) as st:
            print(f"  [{kind}] warm-up…", flush=True)
            for n in (200, 200):  # connections opened, caches and the store warm
                await st.burst(n)
            per_cell: dict[int, list[dict[str, Any]]] = {n: [] for n in CELLS}
            for r in range(runs):
                for n in CELLS:
                    got = _summary_of(await st.burst(n))
                    per_cell[n].append(got)
                    print(f"  [{kind}] run {r + 1} n={n}: p50 {got['p50']} p95 {got['p95']} p99 {got['p99']} ms "
                          f"(admitted {got['admitted']}/{n})", flush=True)
            print(f"  [{kind}] profile…", flush=True)
            profile = await profiled_burst(st, 200)
            lines = len(st.log_path.read_text().splitlines())
    cells = {}
    for n, rs in per_cell.items():
        cells[str(n)] = {
            "runs": rs,
            "p50_ms": spread([x["p50"] for x in rs], 2), "p95_ms": spread([x["p95"] for x in rs], 2),
            "p99_ms": spread([x["p99"] for x in rs], 2), "max_ms": spread([x["max"] for x in rs], 2),
            "all_admitted": all(x["admitted"] == n for x in rs),
            "gc_max_pause_in_ack_window_ms": spread([x["gc_in_ack_window"].get("max_ms", 0.0) for x in rs], 2),
            "gc_total_in_ack_window_ms": spread([x["gc_in_ack_window"].get("total_ms", 0.0) for x in rs], 2),
            # Of core 0's busy time while the acks were due, the share other processes took.
            "others_share_of_core0": _others(rs),
        }
    return {"cells": cells, "profile": profile, "log_lines": lines}


def _others(runs: list[dict[str, Any]]) -> float | None:
    busy = sum(r["core0_ticks"] for r in runs)
    mine = sum(r["parley_ticks"] for r in runs)
    # In clock ticks (10 ms): over a few ticks the share says nothing.
    return round(max(0, busy - mine) / busy, 2) if busy >= 10 else None


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    import gc

    gc.callbacks.append(GC_PAUSES)
    try:
        return await _run_all_restoring(args)
    finally:
        gc.callbacks.remove(GC_PAUSES)


async def _run_all_restoring(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        return await _run_all(args)
    finally:
        os.environ.clear()
        os.environ.update(env)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)


async def _run_all(args: argparse.Namespace) -> dict[str, Any]:
    token = "xoxb-" + "-".join(secrets.token_hex(6) for _ in range(3))
    res: dict[str, Any] = {"load_before": _load(), "stores": {}}
    t0 = time.monotonic()
    with _process(_serve_slack, token) as slack_port, _process(_serve_llm) as base_url:
        stores = ["sqlite"] if args.quick or args.sqlite_only else ["sqlite", "postgres"]
        for kind in stores:
            if kind == "sqlite":
                _pin(last=False)
                res["stores"][kind] = await run_store(kind, base_url, slack_port, token, args.runs, None)
                continue
            from tests.servers import Postgres

            _pin(last=True)  # the server's processes on the other core
            try:
                pg = Postgres()
            except BaseException as e:  # noqa: BLE001 - not installed: say so, keep SQLite's figures
                res["stores"][kind] = {"skipped": f"{type(e).__name__}: {e}"}
                continue
            finally:
                _pin(last=False)
            try:
                res["stores"][kind] = await run_store(kind, base_url, slack_port, token, args.runs, pg.database())
            finally:
                pg.stop()
    res["load_after"] = _load()
    res["seconds"] = round(time.monotonic() - t0, 1)
    return res


def _cell(c: dict[str, Any], key: str) -> str:
    s = c[key]
    return f"{s['median']:.1f} ms ({s['min']:.1f}–{s['max']:.1f})"


#: The stages before the acknowledgement, as the profile names them.
PRE_ACK = (
    "signature check", "bolt: request object (form parsed)", "bolt: dispatch, middleware, listener matching, ack",
    "bolt: aiohttp response", "parse", "admission (per workspace and person)", "governance: admit (glue)",
    "governance: workspace view (version read)", "policy", "panel and channel defaults", "own keys", "estimate",
    "reservation (event-loop side)",
)


def _p99_ok(c: dict[str, Any]) -> str:
    if c["p99_ms"]["max"] < TARGET_P99_MS:
        return "yes, every run"
    return "median yes" if c["p99_ms"]["median"] < TARGET_P99_MS else "no"


def summarize(res: dict[str, Any], runs: int) -> list[str]:
    lines = [
        f"Slash-command acknowledgement (signed request → HTTP 200, timed by the client): the real bolt app over "
        f"HTTP with 30 policy rules, budget caps and a reservation per request; `/ask` and `/compare` mixed, each "
        f"from its own person and channel, N sent at once, each discussion then running; median of {runs} runs "
        f"(range over runs). Parley on one core, the fakes and the client on the other. Load average "
        f"{res['load_before']} before, {res['load_after']} after; the last column is what other processes took "
        f"of Parley's core while the acks were due (others share this machine).",
        "",
        "| store | at once | p50 | p95 | p99 | p99 < 100 ms | others on Parley's core |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, data in res["stores"].items():
        if "skipped" in data:
            lines.append(f"| {kind} | — | skipped: {data['skipped']} | | | | |")
            continue
        for n, c in data["cells"].items():
            share = c["others_share_of_core0"]
            lines.append(f"| {kind} | {n} | {_cell(c, 'p50_ms')} | {_cell(c, 'p95_ms')} | {_cell(c, 'p99_ms')} | "
                         f"{_p99_ok(c)} | {'—' if share is None else f'{share:.0%}'} |")
    before = res.get("before")
    if before:
        parts = []
        for kind, data in before.get("stores", {}).items():
            cells = data.get("cells", {})
            if "200" in cells:
                c = cells["200"]
                parts.append(f"{kind} p50 {_cell(c, 'p50_ms')}, p99 {_cell(c, 'p99_ms')}")
        lines += ["", f"Before these changes (commit {before.get('commit', '?')}, the same benchmark, "
                  f"{before.get('runs', '?')} runs, load {before.get('load_before', '?')}), 200 at once: "
                  + "; ".join(parts) + "."]
    for kind, data in res["stores"].items():
        if "skipped" in data:
            continue
        p = data["profile"]
        per = p["per_request_ms"]
        pre = sum(per.get(k, 0.0) for k in PRE_ACK)
        parts = ", ".join(f"{k} {per[k]:.3f}" for k in sorted(PRE_ACK, key=lambda k: -per.get(k, 0.0))
                          if per.get(k, 0.0) >= 0.001)
        after = per.get("after the ack: the discussions", 0.0)
        rest = per.get("the rest on the loop (aiohttp, asyncio, logging, Slack and LLM clients)", 0.0)
        access = per.get("aiohttp access log line", 0.0)
        gc_max = data["cells"]["200"]["gc_max_pause_in_ack_window_ms"]
        lines += ["", f"Where a 200-burst's time goes on {kind} (event-loop CPU per request, ms, each stage without "
                  f"the stages it calls): before the ack {pre:.3f} in all ({parts}); the discussions after their "
                  f"ack {after:.3f}; aiohttp's access log line {access:.3f}; the rest on the loop {rest:.3f} (aiohttp's "
                  f"server, asyncio, and the discussions' Slack and LLM clients). The {p['reservations']} reservation transaction(s) of "
                  f"the burst on the writer thread: p50 {p['reservation_tx_ms']['p50']:.2f} ms each, waiting p50 "
                  f"{p['reservation_queue_wait_ms']['p50']:.2f} / p99 {p['reservation_queue_wait_ms']['p99']:.2f} ms "
                  f"in the writer's queue. Longest garbage-collector pause while a 200-burst's acks were due: "
                  f"{gc_max['median']:.1f} ms (median over runs; {gc_max['max']:.1f} at worst)."]
    lines += ["", f"Target (issue 15): p99 < {TARGET_P99_MS:.0f} ms at 200 at once; Slack's own limit is "
              f"{SLACK_LIMIT_MS:.0f} ms. Every figure and the profiles: `bench/results/ack.json`."]
    return lines


def _commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip() + ("+local changes" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.ack_bench")
    p.add_argument("--runs", type=int, default=RUNS)
    p.add_argument("--quick", action="store_true", help="SQLite only, 3 runs")
    p.add_argument("--sqlite-only", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "ack.json")
    p.add_argument("--before", type=Path, help="an earlier results file to compare with (its figures are kept)")
    args = p.parse_args(argv if argv is not None else [])
    if args.quick:
        args.runs = min(args.runs, 3)
    sys.path.insert(0, str(ROOT))
    res = asyncio.run(run_all(args))
    res["date"] = datetime.now(UTC).strftime("%Y-%m-%d")
    res["runs"] = args.runs
    res["commit"] = _commit()
    if args.before is not None:
        old = json.loads(args.before.read_text())
        res["before"] = {k: old.get(k) for k in ("commit", "date", "runs", "load_before", "load_after")}
        res["before"]["stores"] = {kind: {"cells": {n: {k: c[k] for k in ("p50_ms", "p95_ms", "p99_ms")}
                                                    for n, c in d.get("cells", {}).items()}}
                                   for kind, d in old.get("stores", {}).items() if "cells" in d}
    res["summary"] = summarize(res, args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    print("\n".join(res["summary"]))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
