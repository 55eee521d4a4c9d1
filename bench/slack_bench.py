"""Slack benchmark: many concurrent streamed replies in one workspace under Slack's limits.

    python -m bench.slack_bench

A fake Slack Web API (its own process) enforces the published limits as sliding
windows: chat.postMessage 1/s per channel (bursts of 2), chat.update 50/min,
chat.startStream and chat.stopStream 20/min, chat.appendStream 100/min, per
workspace. 1, 10 and 50 discussions run at once, each a compare of three
providers in its own channel; every provider streams a 1,200-character answer at
5 chunks/s (12 s). Three strategies render the same workload:

- **parley**: the shared renderer with the Slack sink (budgets per method per
  workspace shared by all replies, native streams while their budget allows);
- **naive-20**: post, then ``chat.update`` every 20 chunks;
- **naive-1s**: post, then ``chat.update`` at most once per second per message.

The naive clients use slack_sdk's own rate-limit retry handler (one retry), as a
typical bot would. Time is compressed ×SCALE (limits and token rates alike);
every figure is reported in Slack seconds. Freshness is the delay between a chunk
leaving the provider and its text being visible in the fake's copy of the message.
Writes bench/results/slack.json and slack.png.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import multiprocessing as mp
import os
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCALE = 10.0
CHUNKS, CHUNK_CHARS, CHUNK_RATE = 60, 20, 5.0  # a 1,200-character answer over 12 s
PANEL = 3
SIZES = (1, 10, 50)
STRATEGIES = ("parley", "naive-20", "naive-1s")


def _serve(port_q: mp.Queue, token: str) -> None:  # type: ignore[type-arg]
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {(os.cpu_count() or 1) - 1})
    from bots.slack.budgets import TIER_LIMITS
    from tests.fakes.slack_api import FakeSlackAPI

    async def go() -> None:
        fake = FakeSlackAPI(
            bot_token=token,
            limits={m: (n, 60 / SCALE) for m, n in TIER_LIMITS.items()},
            post_per_channel=(2, 1 / SCALE),
        )
        await fake.start()
        port_q.put(fake.port)
        await asyncio.Event().wait()

    asyncio.run(go())


def chunk_text(d: int, k: int, i: int) -> str:
    word = f"d{d}t{k}w{i}"
    return (word + " " * CHUNK_CHARS)[: CHUNK_CHARS - 1] + " "


async def provider(d: int, queue: asyncio.Queue[Any], emits: dict[str, list[tuple[float, int]]]) -> None:
    """Three turns streaming at CHUNK_RATE, into a queue: the provider never waits for Slack."""
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

    infos = [TurnInfo(f"d{d}t{k}", "bench", "Bench", f"m{d}_{k}") for k in range(PANEL)]
    texts = {t.turn_id: "" for t in infos}
    for t in infos:
        queue.put_nowait(TurnStarted(t))
        emits[t.turn_id] = []
    start = time.monotonic()
    for i in range(CHUNKS):
        await asyncio.sleep(max(0.0, start + i / (CHUNK_RATE * SCALE) - time.monotonic()))
        now = time.monotonic()
        for k, t in enumerate(infos):
            piece = chunk_text(d, k, i)
            texts[t.turn_id] += piece
            emits[t.turn_id].append((now, len(texts[t.turn_id])))
            queue.put_nowait(TextDelta(t.turn_id, piece))
    for t in infos:
        queue.put_nowait(TurnFinished(t, texts[t.turn_id], TurnUsage(), 0.0, 0.0))
    turns = [TurnSummary(t.turn_id, t.label, "answer", 0, t.provider, t.model, None, "finished", None,
                         1.0, 1.0, 1, 1, 0.0, False) for t in infos]
    queue.put_nowait(DiscussionFinished(f"d{d}", "finished", turns, Totals(PANEL, 0, 0, 0, 0.0, 0.0)))
    queue.put_nowait(None)


async def drain(queue: asyncio.Queue[Any]) -> Any:
    while True:
        ev = await queue.get()
        if ev is None:
            return
        yield ev


async def parley_discussion(client: Any, budgets: Any, d: int, emits: dict[str, Any]) -> None:
    from bots.slack.sink import SlackSink
    from core.render import Renderer

    channel = f"C{d:04d}"
    await budgets.post(channel).acquire(0.0)
    parent = await client.chat_postMessage(channel=channel, text=f"discussion {d}")
    sink = SlackSink(client, budgets, channel, parent["ts"], recipient_user_id="U1", recipient_team_id="T0TEST")
    sink.min_interval = SlackSink.min_interval / SCALE
    queue: asyncio.Queue[Any] = asyncio.Queue()
    producer = asyncio.create_task(provider(d, queue, emits))
    await Renderer(sink).consume(drain(queue))
    await sink.aclose()
    await producer


async def naive_discussion(client: Any, d: int, emits: dict[str, Any], every: int | None, interval: float | None) -> None:
    """What a bot without shared budgets does: post, then update on a fixed rule, final update at the end."""
    from slack_sdk.errors import SlackApiError

    from bots.slack.format import header, to_mrkdwn
    from core.events import TextDelta, TurnFinished, TurnStarted

    channel = f"C{d:04d}"
    try:
        parent = await client.chat_postMessage(channel=channel, text=f"discussion {d}")
    except SlackApiError:
        return
    queue: asyncio.Queue[Any] = asyncio.Queue()
    producer = asyncio.create_task(provider(d, queue, emits))
    info: dict[str, Any] = {}
    text: dict[str, str] = {}
    ts: dict[str, str | None] = {}
    count: dict[str, int] = {}
    last: dict[str, float] = {}

    async def show(tid: str) -> None:
        body = header(info[tid], 1, markdown=False) + "\n\n" + to_mrkdwn(text[tid])
        try:
            if ts[tid] is None:
                r = await client.chat_postMessage(channel=channel, thread_ts=parent["ts"], text=body)
                ts[tid] = r["ts"]
            else:
                await client.chat_update(channel=channel, ts=ts[tid], text=body)
        except SlackApiError:
            pass  # a naive bot logs and moves on
        last[tid] = time.monotonic()

    async for ev in drain(queue):
        if isinstance(ev, TurnStarted):
            tid = ev.turn.turn_id
            info[tid], text[tid], ts[tid], count[tid], last[tid] = ev.turn, "", None, 0, 0.0
        elif isinstance(ev, TextDelta):
            tid = ev.turn_id
            text[tid] += ev.text
            count[tid] += 1
            if ts[tid] is None:
                await show(tid)
            elif every and count[tid] % every == 0:
                await show(tid)
            elif interval and time.monotonic() - last[tid] >= interval / SCALE:
                await show(tid)
        elif isinstance(ev, TurnFinished):
            text[ev.turn.turn_id] = ev.text
            await show(ev.turn.turn_id)
    await producer


def analyse(dump: dict[str, Any], emits: dict[str, list[tuple[float, int]]]) -> dict[str, Any]:
    by_turn: dict[str, list[dict[str, Any]]] = {}
    for m in dump["messages"]:
        if m["thread_ts"] is None:
            continue
        first = m["history"][0][1].split("\n", 1)[0]
        if "`bench/m" not in first:
            continue
        model = first.split("`bench/")[1].split("`")[0]
        d, k = model[1:].split("_")
        by_turn.setdefault(f"d{d}t{k}", []).append(m)
    delays: list[float] = []
    lost_chars = lost_turns = 0
    for tid, marks in emits.items():
        timeline: list[tuple[float, str, int]] = []
        for m in by_turn.get(tid, []):
            for t, text in m["history"]:
                body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
                timeline.append((t, m["ts"], len(body.removesuffix(" …"))))
        timeline.sort()
        # visible(t): characters of the answer on screen after each call, a step function.
        shown: dict[str, int] = {}
        times, visible = [], []
        for t, ts, n in timeline:
            shown[ts] = n
            times.append(t)
            visible.append(max(visible[-1] if visible else 0, sum(shown.values())))
        full = marks[-1][1]
        for t_emit, cum in marks:
            i = bisect.bisect_left(visible, cum)
            if i < len(visible):
                delays.append(max(0.0, times[i] - t_emit) * SCALE)
        final = visible[-1] if visible else 0
        if final < full:
            lost_turns += 1
            lost_chars += full - final
    return {"delays": delays, "lost_chars": lost_chars, "lost_turns": lost_turns}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run_one(base_url: str, token: str, strategy: str, n: int) -> dict[str, Any]:
    import aiohttp
    from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
    from slack_sdk.web.async_client import AsyncWebClient

    from bots.slack.budgets import WorkspaceBudgets

    root = base_url.removesuffix("api/")
    async with aiohttp.ClientSession() as s:
        await s.post(root + "_reset")
    emits: dict[str, list[tuple[float, int]]] = {}
    t0 = time.monotonic()
    if strategy == "parley":
        client = AsyncWebClient(token=token, base_url=base_url)
        budgets = WorkspaceBudgets(window=60 / SCALE, post_rate=1.0 * SCALE)
        await asyncio.gather(*(parley_discussion(client, budgets, d, emits) for d in range(n)))
    else:
        client = AsyncWebClient(token=token, base_url=base_url,
                                retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)])
        every, interval = (20, None) if strategy == "naive-20" else (None, 1.0)
        await asyncio.gather(*(naive_discussion(client, d, emits, every, interval) for d in range(n)))
    wall = (time.monotonic() - t0) * SCALE
    async with aiohttp.ClientSession() as s, s.get(root + "_dump") as r:
        dump = await r.json()
    a = analyse(dump, emits)
    replies = n * PANEL
    calls = len(dump["calls"])
    return {
        "strategy": strategy,
        "discussions": n,
        "replies": replies,
        "calls": calls,
        "calls_per_reply": round(calls / replies, 2),
        "r429": sum(1 for c in dump["calls"] if c[1] == 429),
        "lost_chars": a["lost_chars"],
        "lost_turns": a["lost_turns"],
        "fresh_p50_s": round(pct(a["delays"], 0.50), 2),
        "fresh_p95_s": round(pct(a["delays"], 0.95), 2),
        "wall_s": round(wall, 1),
        "methods": {m: sum(1 for c in dump["calls"] if c[0] == m) for m in {c[0] for c in dump["calls"]}},
    }


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    width = 0.26
    for si, strategy in enumerate(STRATEGIES):
        sel = [r for r in rows if r["strategy"] == strategy]
        xs = [i + (si - 1) * width for i in range(len(sel))]
        axes[0].bar(xs, [r["fresh_p50_s"] for r in sel], width, label=strategy)
        axes[0].scatter(xs, [r["fresh_p95_s"] for r in sel], marker="_", s=200, color="black")
        axes[1].bar(xs, [r["r429"] for r in sel], width, label=strategy)
        axes[2].bar(xs, [r["lost_chars"] for r in sel], width, label=strategy)
    for ax, title in zip(axes, ("freshness p50 (bar) / p95 (tick), Slack s", "HTTP 429s received", "characters lost"),
                         strict=True):
        ax.set_xticks(range(len(SIZES)), [f"{n} disc." for n in SIZES])
        ax.set_title(title, fontsize=10)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Slack: concurrent compare×{PANEL} discussions in one workspace (time ×{SCALE:g} compressed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> dict[str, Any]:
    token = "xoxb-" + secrets.token_hex(12)
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    proc = ctx.Process(target=_serve, args=(q, token), daemon=True)
    proc.start()
    try:
        base_url = f"http://127.0.0.1:{q.get(timeout=30)}/api/"
        rows = []
        for n in SIZES:
            for strategy in STRATEGIES:
                row = asyncio.run(run_one(base_url, token, strategy, n))
                print(json.dumps({k: v for k, v in row.items() if k != "methods"}))
                rows.append(row)
                time.sleep(60 / SCALE)  # let every sliding window empty before the next run
    finally:
        proc.terminate()
    RESULTS.mkdir(parents=True, exist_ok=True)
    chart(rows, RESULTS / "slack.png")

    def get(strategy: str, n: int) -> dict[str, Any]:
        return next(r for r in rows if r["strategy"] == strategy and r["discussions"] == n)

    summary = [
        "| discussions (×3 replies) | strategy | calls/reply | 429s | chars lost | fresh p50 | fresh p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in SIZES:
        for strategy in STRATEGIES:
            r = get(strategy, n)
            summary.append(
                f"| {n} | {strategy} | {r['calls_per_reply']} | {r['r429']} | {r['lost_chars']:,} | "
                f"{r['fresh_p50_s']} s | {r['fresh_p95_s']} s |"
            )
    ratios = []
    for n in SIZES:
        p = get("parley", n)
        for naive in STRATEGIES[1:]:
            q50 = get(naive, n)["fresh_p50_s"] / p["fresh_p50_s"] if p["fresh_p50_s"] else float("inf")
            ratios.append(f"{n}: {naive} p50 ×{q50:.1f}")
    summary.append("")
    summary.append(
        "Naive freshness p50 relative to Parley (higher is staler): " + "; ".join(ratios)
        + f". Time compressed ×{SCALE:g}; figures in Slack seconds. Chart: `bench/results/slack.png`."
    )
    data = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "workload": {"panel": PANEL, "chunks": CHUNKS, "chunk_chars": CHUNK_CHARS, "chunk_rate": CHUNK_RATE,
                     "scale": SCALE},
        "rows": rows,
        "summary": summary,
    }
    (RESULTS / "slack.json").write_text(json.dumps(data, indent=2) + "\n")
    print("\n".join(summary))
    return data


if __name__ == "__main__":
    main()
