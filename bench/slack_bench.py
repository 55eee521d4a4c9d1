"""Slack benchmark: concurrent streamed replies in one workspace, Parley against the bots people run.

    python -m bench.slack_bench            # every cell, RUNS times each
    python -m bench.slack_bench --runs 1   # a quick look

**The fake.** Slack's Web API is the loopback fake (tests/fakes/slack_api.py) in its own process,
enforcing its own table taken from Slack's documentation (``FakeSlackAPI.published``, which cites
each figure), not Parley's: sliding one-minute windows per method per workspace (chat.update 50,
chat.startStream 20, chat.appendStream 100, chat.stopStream 20: each tier's published floor),
chat.postMessage one per second per channel with a burst of 3 (the burst is not published) and a
workspace-wide 300 per minute (Slack says the cap exists but not its figure: assumed), and a
network round trip of 50 ms on every call. A 429 carries Retry-After in whole seconds, as Slack does.

**The workload.** 1, 10 and 50 discussions start at once, each a compare of three providers in its
own channel of one workspace; each provider streams a 1,200-character answer in 60 chunks at
5 chunks/s (12 s). The provider never waits for Slack.

**The strategies**, each with its own library's handling of 429s:

- **parley**: the shared renderer with the Slack sink (:mod:`bots.slack.sink`): workspace budgets
  per method, native streams while their budget allows, otherwise a posted message kept current
  with ``chat.update``, or continued in new messages when updates are short and posting is not;
- **chatgpt-in-slack**: what github.com/seratch/ChatGPT-in-Slack does (app/openai_ops.py,
  app/slack_ops.py): post a "Wait a second" message, then every 20 deltas ``chat.update`` the
  whole text from a background thread, and a final ``chat.update``; the sync ``WebClient`` with
  ``RateLimitErrorRetryHandler(max_retry_count=2)`` (its main.py);
- **chat_stream**: the idiomatic native stream, slack_sdk's ``AsyncWebClient.chat_stream`` (what
  bolt's ``say_stream`` returns), default 256-character buffer, ``append`` per delta then
  ``stop``; slack_sdk's ``AsyncRateLimitErrorRetryHandler`` (one retry). Bolt's own client has
  no rate-limit handler at all: with it a 429 ends the reply at once.

**Time** is compressed ×SCALE for the fake's windows and rates, the network latency, the token
rate, Parley's budgets, *and* every client's back-off: Retry-After is in Slack's seconds and each
client sleeps it divided by SCALE (slack_sdk's handlers are subclassed to do only that). Every
figure is in Slack seconds.

**Freshness**: for every chunk, the time from it leaving the provider to its text being visible in
the fake's copy of the message (the fake records each message's text after every call). "first
text" is the same for each reply's first chunk. **TTFT** is measured end to end in real time: a
signed ``/ask`` slash command to the real bolt app (HTTP mode) until the answer's first text is
visible in the fake, against the fake LLM server.

**The lower bound** a cell's limits allow: a call shows one reply, and the chunks a call makes
visible within ``x`` of leaving the provider are at most those emitted in ``x`` minus the round
trip; so half the chunks within ``x`` needs ``x ≥ replies × 12 s / (2 × calls) + RTT``, where
``calls`` is every call the fake's limits let through while the answers stream (a whole minute's
window of each method, as the windows are empty at the start; chat.postMessage's per-channel rate
and workspace cap, less the parent messages). p95 likewise with 0.95.

Each cell runs RUNS times; a cell's figure is the median of its runs (min–max beside it). The
machine's load (``uptime``) is recorded with the results. Writes bench/results/slack.json and
slack.png; the "summary" lines go to the README through bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import multiprocessing as mp
import os
import queue
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCALE = 10.0
RUNS = 5
CHUNKS, CHUNK_CHARS, CHUNK_RATE = 60, 20, 5.0  # a 1,200-character answer over 12 s
ANSWER_S = CHUNKS / CHUNK_RATE
PANEL = 3
SIZES = (1, 10, 50)
STRATEGIES = ("parley", "chatgpt-in-slack", "chat_stream")
BASELINES = STRATEGIES[1:]
TEAM, USER = "T0TEST", "U1"
#: ChatGPT-in-Slack's texts (app/slack_constants.py).
CGIS_LOADING = ":hourglass_flowing_sand: Wait a second, please ..."
CGIS_SUFFIX = " ... :writing_hand:"
TTFT_RUNS = 7


# --- the fake Slack, in its own process -------------------------------------------------------------


def _serve(port_q: mp.Queue, token: str, scale: float) -> None:  # type: ignore[type-arg]
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {(os.cpu_count() or 1) - 1})
    from tests.fakes.slack_api import FakeSlackAPI

    async def go() -> None:
        fake = FakeSlackAPI.published(bot_token=token, scale=scale)
        await fake.start()
        port_q.put(fake.port)
        await asyncio.Event().wait()

    asyncio.run(go())


# --- slack_sdk's rate-limit handlers, on compressed time ---------------------------------------------


def _retry_seconds(response: Any) -> float:
    """What slack_sdk's RateLimitErrorRetryHandler sleeps: Retry-After (whole seconds) plus up to one."""
    for k in response.headers:
        if k.lower() == "retry-after":
            return int(response.headers[k][0]) + random.random()
    return 1 + random.random()


def scaled_async_handler(max_retry_count: int) -> Any:
    from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler

    class Scaled(AsyncRateLimitErrorRetryHandler):
        """slack_sdk's handler, its sleep divided by SCALE (nothing else changed)."""

        async def prepare_for_next_attempt_async(self, *, state, request, response=None, error=None):  # type: ignore[no-untyped-def]
            if response is None:
                raise error  # type: ignore[misc]
            state.next_attempt_requested = True
            await asyncio.sleep(_retry_seconds(response) / SCALE)
            state.increment_current_attempt()

    return Scaled(max_retry_count=max_retry_count)


def scaled_sync_handler(max_retry_count: int) -> Any:
    from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

    class Scaled(RateLimitErrorRetryHandler):
        def prepare_for_next_attempt(self, *, state, request, response=None, error=None):  # type: ignore[no-untyped-def]
            if response is None:
                raise error  # type: ignore[misc]
            state.next_attempt_requested = True
            time.sleep(_retry_seconds(response) / SCALE)
            state.increment_current_attempt()

    return Scaled(max_retry_count=max_retry_count)


# --- the provider ------------------------------------------------------------------------------------


def chunk_text(d: int, k: int, i: int) -> str:
    word = f"d{d}t{k}w{i}"
    return (word + " " * CHUNK_CHARS)[: CHUNK_CHARS - 1] + " "


def answer_of(d: int, k: int) -> str:
    return "".join(chunk_text(d, k, i) for i in range(CHUNKS))


async def provider(d: int, deliver: Callable[[int, str | None], None], emits: dict[str, list[tuple[float, int]]]) -> None:
    """Discussion ``d``'s three answers at CHUNK_RATE; ``deliver(k, piece)`` never waits (None: the end)."""
    cum = [0] * PANEL
    for k in range(PANEL):
        emits[f"d{d}t{k}"] = []
    start = time.monotonic()
    for i in range(CHUNKS):
        await asyncio.sleep(max(0.0, start + i / (CHUNK_RATE * SCALE) - time.monotonic()))
        now = time.monotonic()
        for k in range(PANEL):
            piece = chunk_text(d, k, i)
            cum[k] += len(piece)
            emits[f"d{d}t{k}"].append((now, cum[k]))
            deliver(k, piece)
    for k in range(PANEL):
        deliver(k, None)


# --- parley --------------------------------------------------------------------------------------------


def parley_budgets() -> Any:
    from bots.slack.budgets import WorkspaceBudgets

    kw: dict[str, Any] = {"window": 60 / SCALE, "post_rate": 1.0 * SCALE}
    if "time_scale" in {f.name for f in fields(WorkspaceBudgets)}:
        kw["time_scale"] = SCALE  # Retry-After is in Slack's seconds
    return WorkspaceBudgets(**kw)


async def parley_discussion(client: Any, budgets: Any, d: int, emits: dict[str, Any], ts_of: dict[str, str]) -> None:
    from bots.slack.sink import STREAM_LIFE, SlackSink
    from core.events import (
        DiscussionFinished,
        TextDelta,
        Totals,
        TurnFinished,
        TurnInfo,
        TurnStarted,
        TurnSummary,
        TurnUsage,
    )
    from core.render import Renderer

    channel = f"C{d:04d}"
    await budgets.post(channel).acquire(0.0)
    parent = await client.chat_postMessage(channel=channel, text=f"discussion {d}")
    sink = SlackSink(client, budgets, channel, parent["ts"], recipient_user_id=USER, recipient_team_id=TEAM,
                     stream_life=STREAM_LIFE / SCALE)
    sink.min_interval = SlackSink.min_interval / SCALE
    infos = [TurnInfo(f"d{d}t{k}", "bench", "Bench", f"m{d}_{k}") for k in range(PANEL)]
    texts = [""] * PANEL
    events: asyncio.Queue[Any] = asyncio.Queue()
    for t in infos:
        events.put_nowait(TurnStarted(t))

    def deliver(k: int, piece: str | None) -> None:
        if piece is not None:
            texts[k] += piece
            events.put_nowait(TextDelta(infos[k].turn_id, piece))
            return
        t = infos[k]
        events.put_nowait(TurnFinished(t, texts[k], TurnUsage(), 0.0, 0.0))
        if k == PANEL - 1:
            turns = [TurnSummary(t.turn_id, t.label, "answer", 0, t.provider, t.model, None, "finished", None,
                                 1.0, 1.0, 1, 1, 0.0, False) for t in infos]
            events.put_nowait(DiscussionFinished(f"d{d}", "finished", turns, Totals(PANEL, 0, 0, 0, 0.0, 0.0)))
            events.put_nowait(None)

    async def drain() -> Any:
        while (ev := await events.get()) is not None:
            yield ev

    producer = asyncio.create_task(provider(d, deliver, emits))
    await Renderer(sink).consume(drain())
    await sink.aclose()
    await producer


# --- ChatGPT-in-Slack ------------------------------------------------------------------------------------


def cgis_reply(client: Any, channel: str, thread_ts: str, q: queue.Queue[str | None], tid: str,
               ts_of: dict[str, str], errors: list[str]) -> None:
    """One reply as ChatGPT-in-Slack writes it (app/openai_ops.py consume_openai_stream_to_write_reply,
    app/slack_ops.py post_wip_message / update_wip_message; one bolt listener thread per reply)."""
    from slack_sdk.errors import SlackApiError

    try:
        wip = client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=CGIS_LOADING)
    except SlackApiError as e:
        errors.append(f"post: {e.response.get('error')}")
        while q.get() is not None:
            pass
        return
    ts = str(wip["ts"])
    ts_of[ts] = tid
    content, word_count, threads = "", 0, []

    def update(text: str) -> None:
        try:
            client.chat_update(channel=channel, ts=ts, text=text + CGIS_SUFFIX)
        except SlackApiError as e:  # the thread dies with it (its exception is only logged)
            errors.append(f"interim: {e.response.get('error')}")

    try:
        while (piece := q.get()) is not None:
            word_count += 1
            content += piece
            if word_count >= 20:
                t = threading.Thread(target=update, args=(content,), daemon=True)
                t.start()
                threads.append(t)
                word_count = 0
        for t in threads:
            t.join()
        client.chat_update(channel=channel, ts=ts, text=content)
    except SlackApiError as e:
        errors.append(f"final: {e.response.get('error')}")
        # its listener's `except Exception`: chat.update with the text so far and a warning
        with contextlib.suppress(SlackApiError):
            client.chat_update(channel=channel, ts=ts, text=content + "\n\n:warning: Failed: ratelimited")


async def cgis_discussion(client: Any, d: int, emits: dict[str, Any], ts_of: dict[str, str], errors: list[str]) -> None:
    from slack_sdk.errors import SlackApiError

    channel = f"C{d:04d}"
    try:
        parent = await asyncio.to_thread(client.chat_postMessage, channel=channel, text=f"discussion {d}")
    except SlackApiError as e:
        errors.append(f"parent: {e.response.get('error')}")
        return
    queues: list[queue.Queue[str | None]] = [queue.Queue() for _ in range(PANEL)]
    threads = [threading.Thread(target=cgis_reply, args=(client, channel, parent["ts"], queues[k], f"d{d}t{k}",
                                                          ts_of, errors), daemon=True) for k in range(PANEL)]
    for t in threads:
        t.start()
    await provider(d, lambda k, piece: queues[k].put(piece), emits)
    await asyncio.gather(*(asyncio.to_thread(t.join) for t in threads))


# --- slack_sdk chat_stream / bolt say_stream -------------------------------------------------------------


async def stream_reply(client: Any, channel: str, thread_ts: str, q: asyncio.Queue[str | None], tid: str,
                       ts_of: dict[str, str], errors: list[str]) -> None:
    from slack_sdk.errors import SlackApiError

    streamer = await client.chat_stream(channel=channel, thread_ts=thread_ts, recipient_team_id=TEAM,
                                        recipient_user_id=USER)
    try:
        while (piece := await q.get()) is not None:
            await streamer.append(markdown_text=piece)
            if streamer.ts:
                ts_of[streamer.ts] = tid
        await streamer.stop()
        if streamer.ts:
            ts_of[streamer.ts] = tid
    except SlackApiError as e:  # unhandled in the listener: the reply ends here
        errors.append(f"stream: {e.response.get('error')}")
        while await q.get() is not None:
            pass


async def stream_discussion(client: Any, d: int, emits: dict[str, Any], ts_of: dict[str, str], errors: list[str]) -> None:
    from slack_sdk.errors import SlackApiError

    channel = f"C{d:04d}"
    try:
        parent = await client.chat_postMessage(channel=channel, text=f"discussion {d}")
    except SlackApiError as e:
        errors.append(f"parent: {e.response.get('error')}")
        return
    queues: list[asyncio.Queue[str | None]] = [asyncio.Queue() for _ in range(PANEL)]
    replies = [asyncio.create_task(stream_reply(client, channel, parent["ts"], queues[k], f"d{d}t{k}", ts_of, errors))
               for k in range(PANEL)]
    await provider(d, lambda k, piece: queues[k].put_nowait(piece), emits)
    await asyncio.gather(*replies)


# --- what the fake shows -----------------------------------------------------------------------------------


def body(text: str) -> str:
    """The answer's text a message shows, without any strategy's decoration."""
    if text.startswith(CGIS_LOADING):
        return ""
    first, sep, rest = text.partition("\n\n")
    if "`bench/m" in first:  # Parley's label line
        text = rest if sep else ""
    text = text.split("\n\n:warning:", 1)[0].split("\n\n⚠️", 1)[0]
    return text.removesuffix(CGIS_SUFFIX).removesuffix(" …")


def turn_of_header(text: str) -> str | None:
    first = text.split("\n", 1)[0]
    if "`bench/m" not in first:
        return None
    d, k = first.split("`bench/m")[1].split("`")[0].split("_")
    return f"d{d}t{k}"


def analyse(dump: dict[str, Any], emits: dict[str, list[tuple[float, int]]], ts_of: dict[str, str]) -> dict[str, Any]:
    by_turn: dict[str, list[dict[str, Any]]] = {}
    for m in dump["messages"]:
        if m["thread_ts"] is None or not m["history"]:
            continue
        tid = ts_of.get(m["ts"]) or turn_of_header(m["history"][0][1])
        if tid is not None:
            by_turn.setdefault(tid, []).append(m)
    delays: list[float] = []
    firsts: list[float] = []
    by_kind: dict[str, list[float]] = {}
    lost_chars = lost_turns = garbled = 0
    for tid, marks in emits.items():
        d, k = (int(x) for x in tid[1:].split("t"))
        msgs = sorted(by_turn.get(tid, []), key=lambda m: float(m["ts"]))
        kind = msgs[0]["kind"] if msgs else "none"
        timeline = sorted((t, m["ts"], len(body(text))) for m in msgs for t, text in m["history"])
        shown: dict[str, int] = {}
        times: list[float] = []
        visible: list[int] = []
        for t, ts, n in timeline:
            shown[ts] = n
            times.append(t)
            visible.append(max(visible[-1] if visible else 0, sum(shown.values())))
        for j, (t_emit, cum) in enumerate(marks):
            i = bisect.bisect_left(visible, cum)
            # a chunk never shown counts as never fresh
            delay = max(0.0, times[i] - t_emit) * SCALE if i < len(visible) else math.inf
            delays.append(delay)
            by_kind.setdefault(kind, []).append(delay)
            if j == 0:
                firsts.append(delay)
        full = marks[-1][1]
        final = "".join(body(m["history"][-1][1]) for m in msgs)
        if len(final) < full:
            lost_turns += 1
            lost_chars += full - len(final)
        if final != answer_of(d, k)[: len(final)] or (len(final) > full):
            garbled += 1  # text out of order, doubled or changed
    return {"delays": delays, "firsts": firsts, "by_kind": by_kind, "lost_chars": lost_chars, "lost_turns": lost_turns,
            "garbled": garbled, "replies_shown": sum(1 for t in emits if by_turn.get(t))}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# --- the limits' lower bound ---------------------------------------------------------------------------------


def lower_bound(n: int) -> dict[str, float]:
    """Freshness p50 and p95 no strategy can beat under the fake's limits (see the module's docstring)."""
    from tests.fakes.slack_api import POST_BURST, POST_PER_CHANNEL_PER_SECOND, PUBLISHED_PER_MINUTE, RTT

    replies = PANEL * n
    out = {}
    for name, share in (("p50", 0.5), ("p95", 0.95)):
        x = RTT
        for _ in range(20):  # calls made up to x after the answers end count too
            window = ANSWER_S + x
            posts = min(PUBLISHED_PER_MINUTE["chat.postMessage"] * max(1.0, window / 60) - n,
                        n * (POST_BURST - 1 + POST_PER_CHANNEL_PER_SECOND * window))
            others = sum(PUBLISHED_PER_MINUTE[m] * max(1.0, window / 60)
                         for m in ("chat.update", "chat.startStream", "chat.appendStream", "chat.stopStream"))
            x = share * replies * ANSWER_S / (posts + others) + RTT
        out[name] = round(x, 2)
    return out


# --- one run -------------------------------------------------------------------------------------------------


async def run_one(base_url: str, token: str, strategy: str, n: int) -> dict[str, Any]:
    import aiohttp
    from slack_sdk import WebClient
    from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
    from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler
    from slack_sdk.web.async_client import AsyncWebClient

    root = base_url.removesuffix("api/")
    async with aiohttp.ClientSession() as s:
        await s.post(root + "_reset")
    emits: dict[str, list[tuple[float, int]]] = {}
    ts_of: dict[str, str] = {}
    errors: list[str] = []
    t0 = time.monotonic()
    if strategy == "parley":
        client = AsyncWebClient(token=token, base_url=base_url)
        budgets = parley_budgets()
        await asyncio.gather(*(parley_discussion(client, budgets, d, emits, ts_of) for d in range(n)))
    elif strategy == "chatgpt-in-slack":
        sync = WebClient(token=token, base_url=base_url,
                         retry_handlers=[ConnectionErrorRetryHandler(), scaled_sync_handler(2)])
        await asyncio.gather(*(cgis_discussion(sync, d, emits, ts_of, errors) for d in range(n)))
    else:
        client = AsyncWebClient(token=token, base_url=base_url,
                                retry_handlers=[AsyncConnectionErrorRetryHandler(), scaled_async_handler(1)])
        await asyncio.gather(*(stream_discussion(client, d, emits, ts_of, errors) for d in range(n)))
    wall = (time.monotonic() - t0) * SCALE
    async with aiohttp.ClientSession() as s, s.get(root + "_dump") as r:
        dump = await r.json()
    a = analyse(dump, emits, ts_of)
    replies = n * PANEL
    calls = dump["calls"]
    methods: dict[str, int] = {}
    for c in calls:
        methods[c[0]] = methods.get(c[0], 0) + 1
    return {
        "strategy": strategy,
        "discussions": n,
        "replies": replies,
        "calls": len(calls),
        "calls_per_reply": round(len(calls) / replies, 2),
        "r429": sum(1 for c in calls if c[1] == 429),
        "lost_chars": a["lost_chars"],
        "lost_turns": a["lost_turns"],
        "garbled_turns": a["garbled"],
        "fresh_p50_s": round(pct(a["delays"], 0.50), 2),
        "fresh_p95_s": round(pct(a["delays"], 0.95), 2),
        "first_text_p50_s": round(pct(a["firsts"], 0.50), 2),
        # by how each reply was written: a native stream, or posted (and updated or continued)
        "fresh_p50_by_kind_s": {k: round(pct(v, 0.50), 2) for k, v in a["by_kind"].items()},
        "fresh_p95_by_kind_s": {k: round(pct(v, 0.95), 2) for k, v in a["by_kind"].items()},
        "replies_by_kind": {k: len(v) // CHUNKS for k, v in a["by_kind"].items()},
        "wall_s": round(wall, 1),
        "errors": len(errors),
        "methods": methods,
    }


# --- TTFT: a slash command to the first visible text, end to end, in real time ---------------------------


async def measure_ttft(runs: int) -> dict[str, Any]:
    """The real bolt app (HTTP mode) and services, the fake LLM, the published-limits fake Slack with its
    50 ms round trip, in real time: from a signed ``/ask`` to the answer's first text in the fake."""
    import aiohttp
    from aiohttp import web
    from slack_sdk.web.async_client import AsyncWebClient

    from bench.replica_bench import timed_llm
    from bots.slack.app import SlackFront
    from core.config import Settings
    from core.services import build_services
    from tests.fakes.llm_server import Scenario
    from tests.fakes.slack_api import FakeSlackAPI, sign

    text = "".join(chunk_text(0, 0, i) for i in range(10))
    out: dict[str, list[float]] = {"slash_to_visible_ms": [], "llm_first_to_visible_ms": [], "slash_to_llm_first_ms": []}
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="parley-ttft-") as tmp:
        llm = timed_llm()
        await llm.start()
        try:
            cfg = Path(tmp) / "p.toml"
            cfg.write_text(f'[providers.one]\nlabel = "one"\nbase_url = "{llm.base_url}"\nkey_env = "K_ONE"\n'
                           'default_model = "one-m"\n[providers.one.models."one-m"]\ninput = 1.0\noutput = 2.0\n')
            os.environ.update({"PARLEY_CONFIG": str(cfg), "K_ONE": "k-" + secrets.token_hex(8),
                               "PARLEY_DB": str(Path(tmp) / "parley.db")})
            llm.scenarios["one-m"] = Scenario(text=text, chunk_chars=CHUNK_CHARS, chunk_delay=1 / CHUNK_RATE)
            token, secret = "xoxb-" + secrets.token_hex(12), secrets.token_hex(16)
            async with FakeSlackAPI.published(bot_token=token) as slack:
                async with build_services(Settings()) as services:
                    front = SlackFront(services, AsyncWebClient(token=token, base_url=slack.base_url),
                                       signing_secret=secret)
                    await front.start()
                    runner = web.AppRunner(front.web_app(), access_log=None)
                    await runner.setup()
                    site = web.TCPSite(runner, "127.0.0.1", 0)
                    await site.start()
                    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/slack/events"  # type: ignore[union-attr]
                    try:
                        async with aiohttp.ClientSession() as http:
                            for i in range(runs):
                                llm.emits.clear()
                                channel = f"CT{i:03d}"
                                form = {"team_id": TEAM, "channel_id": channel, "user_id": USER, "command": "/ask",
                                        "text": f"provider:one Question {i}?", "api_app_id": "A0TEST",
                                        "response_url": slack.response_url, "trigger_id": "1.2.3"}
                                payload = urlencode(form)
                                before = front.spawned
                                t0 = time.monotonic()
                                async with http.post(url, data=payload, headers={
                                        "Content-Type": "application/x-www-form-urlencoded",
                                        **sign(secret, payload)}) as r:
                                    assert r.status == 200, await r.text()
                                await slack.wait_for(lambda ch=channel: any(
                                    m.channel == ch and m.thread_ts and _answer_shown(m) for m in slack.messages.values()),
                                    within=30)
                                seen = min(t for m in slack.messages.values() if m.channel == channel and m.thread_ts
                                           for t, txt in m.history if _answer_text(txt))
                                first = min(t for marks in llm.emits.values() for t, _ in marks[:1])
                                out["slash_to_visible_ms"].append((seen - t0) * 1000)
                                out["llm_first_to_visible_ms"].append((seen - first) * 1000)
                                out["slash_to_llm_first_ms"].append((first - t0) * 1000)
                                await front.idle(before + 1)
                    finally:
                        await front.shutdown()
                        await runner.cleanup()
        finally:
            await llm.stop()
            os.environ.clear()
            os.environ.update(saved)
    return {k: {"median": round(statistics.median(v), 1), "min": round(min(v), 1), "max": round(max(v), 1)}
            for k, v in out.items()} | {"runs": runs}


def _answer_text(text: str) -> bool:
    first, _, rest = text.partition("\n\n")
    return "`one/one-m`" in first and bool(rest.removesuffix(" …").strip())


def _answer_shown(m: Any) -> bool:
    return any(_answer_text(t) for _, t in m.history)


# --- the whole bench -------------------------------------------------------------------------------------------


def cell(rows: list[dict[str, Any]], strategy: str, n: int) -> dict[str, Any]:
    """The median (and min, max) of each figure over a cell's runs (``inf``: text never shown)."""
    sel = [r for r in rows if r["strategy"] == strategy and r["discussions"] == n]
    out: dict[str, Any] = {"strategy": strategy, "discussions": n, "runs": len(sel)}
    for key in ("fresh_p50_s", "fresh_p95_s", "first_text_p50_s", "calls_per_reply", "r429", "lost_chars",
                "garbled_turns", "wall_s"):
        vals = [r[key] for r in sel if not (isinstance(r[key], float) and math.isnan(r[key]))]
        out[key] = round(statistics.median(vals), 2) if vals else float("nan")
        out[key + "_range"] = [min(vals), max(vals)] if vals else None
    return out


def secs(v: float) -> str:
    """A freshness figure for the table: a chunk never shown makes it "never"."""
    return "never" if math.isinf(v) else f"{v:g} s"


def jsonable(obj: Any) -> Any:
    """JSON has no infinity: a chunk never shown is stored as null."""
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [jsonable(v) for v in obj]
    return obj


def chart(cells: list[dict[str, Any]], bounds: dict[int, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    width = 0.8 / len(STRATEGIES)
    for si, strategy in enumerate(STRATEGIES):
        sel = [c for c in cells if c["strategy"] == strategy]
        xs = [i + (si - (len(STRATEGIES) - 1) / 2) * width for i in range(len(sel))]
        shown = [not math.isinf(c["fresh_p50_s"]) for c in sel]
        p50 = [c["fresh_p50_s"] if ok else math.nan for c, ok in zip(sel, shown, strict=True)]
        lo = [c["fresh_p50_s"] - c["fresh_p50_s_range"][0] if ok else 0 for c, ok in zip(sel, shown, strict=True)]
        hi = [min(c["fresh_p50_s_range"][1], 1e4) - c["fresh_p50_s"] if ok else 0
              for c, ok in zip(sel, shown, strict=True)]
        axes[0].bar(xs, p50, width, yerr=[lo, hi], capsize=3, label=strategy)
        axes[0].scatter(xs, [c["fresh_p95_s"] if not math.isinf(c["fresh_p95_s"]) else math.nan for c in sel],
                        marker="_", s=200, color="black")
        for x, ok in zip(xs, shown, strict=True):
            if not ok:
                axes[0].text(x, 1, "most text\nnever shown", ha="center", fontsize=6, rotation=90)
        axes[1].bar(xs, [c["r429"] for c in sel], width, label=strategy)
        axes[2].bar(xs, [c["lost_chars"] for c in sel], width, label=strategy)
    axes[0].scatter(range(len(SIZES)), [bounds[n]["p50"] for n in SIZES], marker="*", s=90, color="red",
                    label="lower bound p50", zorder=5)
    for ax, title in zip(axes, ("freshness p50 (bar, min–max) / p95 (tick), Slack s",
                                "HTTP 429s received (median run)", "characters lost (median run)"), strict=True):
        ax.set_xticks(range(len(SIZES)), [f"{n} disc. ×{PANEL}" for n in SIZES])
        ax.set_title(title, fontsize=10)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Slack: concurrent compare×{PANEL} discussions in one workspace, Slack's published limits "
                 f"(time ×{SCALE:g} compressed, Retry-After and back-off too)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def uptime() -> str:
    """The load averages over 1, 5 and 15 minutes (as ``uptime`` prints them)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--no-ttft", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "slack.json"))
    args = parser.parse_args(argv if argv is not None else [])
    sizes = [int(x) for x in args.sizes.split(",")]
    strategies = args.strategies.split(",")
    token = "xoxb-" + secrets.token_hex(12)
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    proc = ctx.Process(target=_serve, args=(q, token, SCALE), daemon=True)
    proc.start()
    load = {"before": uptime()}
    t_start = time.monotonic()
    rows: list[dict[str, Any]] = []
    try:
        base_url = f"http://127.0.0.1:{q.get(timeout=30)}/api/"
        for n in sizes:
            for run in range(args.runs):
                for strategy in strategies:  # interleaved: a load spike spreads over every strategy
                    row = asyncio.run(run_one(base_url, token, strategy, n))
                    row["run"] = run
                    row["loadavg"] = uptime()
                    print(json.dumps(jsonable({k: v for k, v in row.items() if k != "methods"})), flush=True)
                    rows.append(row)
    finally:
        proc.terminate()
    ttft = None if args.no_ttft else asyncio.run(measure_ttft(TTFT_RUNS))
    if ttft:
        print(json.dumps({"ttft": ttft}), flush=True)
    load["after"] = uptime()
    bounds = {n: lower_bound(n) for n in sizes}
    cells = [cell(rows, s, n) for n in sizes for s in strategies]

    def get(strategy: str, n: int) -> dict[str, Any]:
        return next(c for c in cells if c["strategy"] == strategy and c["discussions"] == n)

    def rng(c: dict[str, Any], key: str) -> str:
        lo, hi = c[key + "_range"] or (float("nan"), float("nan"))
        return secs(c[key]) if math.isinf(lo) else f"{secs(c[key])} ({lo:g}–{secs(hi).removesuffix(' s')})"

    summary = [
        f"Compare×{PANEL} discussions started at once, one channel each, one workspace; answers of 1,200 "
        f"characters at 5 chunks/s. Slack's published limits (the fake's own table), a 50 ms round trip, "
        f"time ×{SCALE:g} compressed with Retry-After and every client's back-off; Slack seconds; median "
        f"of {args.runs} runs (min–max).",
        "",
        "| discussions | strategy | calls/reply | 429s | chars lost | fresh p50 (min–max) | fresh p95 | first text p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        for strategy in strategies:
            c = get(strategy, n)
            summary.append(
                f"| {n} | {strategy} | {c['calls_per_reply']} | {c['r429']:g} | {c['lost_chars']:,.0f} | "
                f"{rng(c, 'fresh_p50_s')} | {secs(c['fresh_p95_s'])} | {secs(c['first_text_p50_s'])} |"
            )
        b = bounds[n]
        summary.append(f"| {n} | *lower bound of the limits* | | 0 | 0 | {b['p50']} s | {b['p95']} s | |")
    notes = []
    for n in sizes:
        if "parley" not in strategies:
            continue
        p = get("parley", n)
        part = f"{n}: Parley p50 ×{p['fresh_p50_s'] / bounds[n]['p50']:.1f} the bound"
        others = [get(s, n) for s in strategies if s != "parley"]
        if others:
            best = min(others, key=lambda c: c["fresh_p50_s"])
            part += f", best baseline ({best['strategy']}) ×{best['fresh_p50_s'] / p['fresh_p50_s']:.1f} staler"
        notes.append(part)
    summary.append("")
    summary.append("; ".join(notes) + ". Chart: `bench/results/slack.png`.")
    if ttft:
        summary.append("")
        summary.append(
            f"Time to first token, end to end in real time (a signed `/ask` to the bolt app until the answer's "
            f"first text is visible in the fake Slack, 50 ms round trip; median of {ttft['runs']}): "
            f"{ttft['slash_to_visible_ms']['median']:.0f} ms "
            f"({ttft['slash_to_visible_ms']['min']:.0f}–{ttft['slash_to_visible_ms']['max']:.0f}), of which "
            f"{ttft['slash_to_llm_first_ms']['median']:.0f} ms until the model's first token and "
            f"{ttft['llm_first_to_visible_ms']['median']:.0f} ms from it to Slack."
        )
    data = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "loadavg": load},
        "workload": {"panel": PANEL, "chunks": CHUNKS, "chunk_chars": CHUNK_CHARS, "chunk_rate": CHUNK_RATE,
                     "scale": SCALE, "runs": args.runs, "bench_seconds": round(time.monotonic() - t_start)},
        "bounds": bounds,
        "cells": cells,
        "ttft": ttft,
        "rows": rows,
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if sizes == list(SIZES) and strategies == list(STRATEGIES):
        chart(cells, bounds, out.with_suffix(".png"))
    out.write_text(json.dumps(jsonable(data), indent=2) + "\n")
    print("\n".join(summary))
    return data


if __name__ == "__main__":
    main(sys.argv[1:])
