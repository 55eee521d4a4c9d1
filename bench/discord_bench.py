"""Discord streaming benchmark: Parley's budgeted renderer vs. one edit per second per message.

    python -m bench.discord_bench

The real discord.py client talks to the loopback fake Discord API, which
enforces Discord's per-channel message bucket (5 creates/edits per 5 s, fixed
windows, real ``X-RateLimit-*`` headers, 429 past the limit). Turns are
synthetic event streams (TurnStarted, TextDelta at 25 chunks/s for 8 s,
TurnFinished), so the figures are about Discord, not a model. 1 and 10
concurrent turns share one thread; 50 turns are 5 threads of 10.

Time is compressed by ``SCALE`` (the bucket window, the token rate, the
renderer's interval and the naive interval all shrink together) so the whole
run fits in about a minute; every time figure is reported in Discord seconds
(measured × SCALE).

Measured per strategy and size: REST calls per reply (429s included), 429s,
characters lost (final message text vs. the answer), and freshness: the delay
from a delta being yielded to the fake storing a message that shows it (p50,
p95). Writes bench/results/discord.json and discord.png.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCALE = 4.0  # time compression
CHUNKS_PER_SECOND = 25.0
SECONDS = 8.0
CHUNK = "word "
LIMIT, WINDOW = 5, 5.0  # Discord's per-channel message bucket
NAIVE_INTERVAL = 1.0  # naive strategy: one edit per second per message
SIZES = [(1, 1), (10, 1), (50, 5)]  # (turns, threads)


def _turn(i: int) -> Any:
    from core.events import TurnInfo

    return TurnInfo(f"turn{i:03d}", "bench", "Bench", "model", f"p{i}", f"Turn {i:03d}", "bench")


class Probe:
    """Delta yield times and the times the fake stored text showing them."""

    def __init__(self) -> None:
        self.yielded: dict[str, list[tuple[int, float]]] = {}
        self.visible: dict[str, list[tuple[int, float]]] = {}
        self.final: dict[str, str] = {}

    def on_store(self, channel: int, message: int, content: str, t: float) -> None:
        head, _, body = content.partition("\n")
        if "Turn " not in head:
            return
        turn = "turn" + head.split("Turn ", 1)[1][:3]
        body = body.removesuffix(" …")
        if body == "…":
            body = ""
        self.visible.setdefault(turn, []).append((len(body), t))
        self.final[turn] = body

    def freshness(self) -> list[float]:
        out = []
        for turn, ys in self.yielded.items():
            vis = self.visible.get(turn, [])
            j = 0
            for n, ty in ys:
                while j < len(vis) and vis[j][0] < n:
                    j += 1
                if j < len(vis):
                    out.append(max(0.0, vis[j][1] - ty))
        return out


async def synthetic(turns: list[Any], probe: Probe) -> AsyncIterator[Any]:
    """A discussion's events: every turn streams CHUNKS_PER_SECOND × SCALE chunks a second."""
    from core.events import DiscussionStarted, TextDelta, TurnFinished, TurnStarted, TurnUsage

    yield DiscussionStarted("bench", "parallel", "q", [t.label for t in turns])
    n = int(CHUNKS_PER_SECOND * SECONDS)
    interval = 1.0 / (CHUNKS_PER_SECOND * SCALE)
    for t in turns:
        yield TurnStarted(t)
    start = time.monotonic()
    for k in range(1, n + 1):
        delay = start + k * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        for t in turns:
            probe.yielded.setdefault(t.turn_id, []).append((k * len(CHUNK), now))
            yield TextDelta(t.turn_id, CHUNK)
    for t in turns:
        yield TurnFinished(t, CHUNK * n, TurnUsage(), None, 0.0)


async def run_ours(client: Any, threads: list[int], per_thread: int, probe: Probe) -> dict[str, Any]:
    from bots.discord.ratelimit import ChannelBudgets
    from bots.discord.sink import DiscordSink
    from core.render import Renderer

    budgets = ChannelBudgets(limit=LIMIT, window=WINDOW / SCALE, global_per_second=50 * SCALE)
    renderers = []

    async def one(idx: int, thread: int) -> None:
        sink = DiscordSink(client, thread, budgets)
        sink.min_interval = 1.0 / SCALE
        r = Renderer(sink)
        renderers.append(r)
        turns = [_turn(idx * per_thread + i) for i in range(per_thread)]
        await r.consume(synthetic(turns, probe))

    await asyncio.gather(*(one(i, th) for i, th in enumerate(threads)))
    return {"renderer_429s": sum(r.rate_limited for r in renderers), "lost_ops": sum(r.lost_ops for r in renderers)}


async def run_naive(client: Any, threads: list[int], per_thread: int, probe: Probe) -> dict[str, Any]:
    """One message per turn, edited at most once per NAIVE_INTERVAL; discord.py handles 429s its own way."""
    from bots.discord.format import header
    from core.events import TextDelta, TurnFinished, TurnStarted

    async def thread_run(idx: int, thread: int) -> None:
        channel = client.get_partial_messageable(thread)
        turns = [_turn(idx * per_thread + i) for i in range(per_thread)]
        texts: dict[str, str] = {t.turn_id: "" for t in turns}
        done: dict[str, asyncio.Event] = {t.turn_id: asyncio.Event() for t in turns}

        async def writer(t: Any) -> None:
            with contextlib.suppress(Exception):
                msg = await channel.send(content=header(t) + "\n…")
                shown = ""
                while True:
                    finished = done[t.turn_id].is_set()
                    if texts[t.turn_id] != shown:
                        shown = texts[t.turn_id]
                        with contextlib.suppress(Exception):
                            await msg.edit(content=header(t) + "\n" + shown + ("" if finished else " …"))
                    if finished and texts[t.turn_id] == shown:
                        return
                    await asyncio.sleep(NAIVE_INTERVAL / SCALE)

        writers = []
        async for ev in synthetic(turns, probe):
            if isinstance(ev, TurnStarted):
                writers.append(asyncio.create_task(writer(ev.turn)))
            elif isinstance(ev, TextDelta):
                texts[ev.turn_id] += ev.text
            elif isinstance(ev, TurnFinished):
                texts[ev.turn.turn_id] = ev.text
                done[ev.turn.turn_id].set()
        await asyncio.gather(*writers)

    await asyncio.gather(*(thread_run(i, th) for i, th in enumerate(threads)))
    return {}


async def measure(strategy: str, turns: int, n_threads: int) -> dict[str, Any]:
    from bots.discord.app import DiscordFront
    from bots.discord.config import DiscordSettings, configure_api, make_client
    from core.config import Settings
    from core.services import build_services
    from tests.fakes.discord_api import FakeDiscordAPI, snowflake

    app_id = snowflake()
    token = base64.b64encode(str(app_id).encode()).decode().rstrip("=") + "." + secrets.token_urlsafe(30)
    async with FakeDiscordAPI(token=token, app_id=app_id, channel_limit=(LIMIT, WINDOW / SCALE)) as api:
        os.environ["DISCORD_API_URL"] = api.base_url
        settings = DiscordSettings()
        configure_api(settings)
        probe = Probe()
        api.on_store = probe.on_store
        async with build_services(Settings()) as services:
            client = make_client(settings)
            front = DiscordFront(services, client)
            await front.login(token)
            guild = snowflake()
            threads = [snowflake() for _ in range(n_threads)]
            for th in threads:
                api.add_channel(th, guild)
            calls0, limited0 = len(api.calls), api.limited
            t0 = time.monotonic()
            extra = await (run_ours if strategy == "parley" else run_naive)(client, threads, turns // n_threads,
                                                                            probe)
            wall = time.monotonic() - t0
            await client.close()
        writes = [c for c in api.calls[calls0:] if "/messages" in c.path and c.method in ("POST", "PATCH")]
    answer = CHUNK * int(CHUNKS_PER_SECOND * SECONDS)
    lost = sum(len(answer) - len(os.path.commonprefix([answer, probe.final.get(f"turn{i:03d}", "")]))
               for i in range(turns))
    fresh = sorted(probe.freshness())
    q = statistics.quantiles(fresh, n=20) if len(fresh) >= 20 else [0.0] * 19
    return {
        "strategy": strategy,
        "turns": turns,
        "threads": n_threads,
        "rest_calls_per_reply": round(len(writes) / turns, 1),
        "http_429": api.limited - limited0,
        "chars_lost": lost,
        "freshness_p50_s": round(statistics.median(fresh) * SCALE, 2) if fresh else None,
        "freshness_p95_s": round(q[18] * SCALE, 2),
        "wall_s": round(wall * SCALE, 1),
        **extra,
    }


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [t for t, _ in SIZES]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.38
    for k, (strategy, color) in enumerate((("parley", "#5865F2"), ("naive", "#ED4245"))):
        sel = {r["turns"]: r for r in rows if r["strategy"] == strategy}
        xs = [i + (k - 0.5) * width for i in range(len(sizes))]
        axes[0].bar(xs, [sel[s]["freshness_p50_s"] or 0 for s in sizes], width, color=color, label=f"{strategy} p50")
        axes[0].scatter(xs, [sel[s]["freshness_p95_s"] or 0 for s in sizes], color="black", marker="_", s=200,
                        zorder=3)
        axes[1].bar(xs, [sel[s]["http_429"] for s in sizes], width, color=color, label=strategy)
        axes[2].bar(xs, [sel[s]["rest_calls_per_reply"] for s in sizes], width, color=color, label=strategy)
    titles = ("Freshness, s (bar p50, tick p95)", "HTTP 429s", "REST calls per reply")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xticks(range(len(sizes)), [f"{s} turns" for s in sizes])
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle("Discord: Parley's per-channel budget vs. one edit/s per message (5 writes / 5 s per channel)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run_all() -> list[dict[str, Any]]:
    rows = []
    for strategy in ("parley", "naive"):
        for turns, threads in SIZES:
            row = await measure(strategy, turns, threads)
            print(json.dumps(row))
            rows.append(row)
    return rows


def main() -> dict[str, Any]:
    logging.getLogger("discord").setLevel(logging.ERROR)  # discord.py logs every 429 it sleeps on
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PARLEY_DB"] = str(Path(tmp) / "bench.db")
        os.environ.pop("PARLEY_DISCORD_SHARDS", None)
        rows = asyncio.run(run_all())
    by = {(r["strategy"], r["turns"]): r for r in rows}
    summary = [
        "| concurrent turns | strategy | REST calls/reply | 429s | chars lost | fresh p50 | fresh p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for turns, threads in SIZES:
        where = "1 thread" if threads == 1 else f"{threads} threads"
        for strategy, name in (("parley", "parley"), ("naive", "naive 1 edit/s")):
            r = by[(strategy, turns)]
            summary.append(
                f"| {turns} ({where}) | {name} | {r['rest_calls_per_reply']} | {r['http_429']} | {r['chars_lost']} "
                f"| {r['freshness_p50_s']} s | {r['freshness_p95_s']} s |"
            )
        p, n = by[("parley", turns)], by[("naive", turns)]
        if p["freshness_p50_s"] and n["freshness_p50_s"]:
            ratios.append(
                f"{turns}: p50 ×{n['freshness_p50_s'] / p['freshness_p50_s']:.1f}, "
                f"p95 ×{n['freshness_p95_s'] / p['freshness_p95_s']:.1f}"
            )
    summary += [
        "",
        "Naive freshness relative to Parley (higher is staler): " + "; ".join(ratios)
        + f". Time compressed ×{SCALE:g}; figures in Discord seconds. Chart: `bench/results/discord.png`.",
    ]
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "setup": {
            "bucket": f"{LIMIT} writes per {WINDOW:g} s per channel (fake Discord, fixed windows, X-RateLimit headers)",
            "stream": f"{CHUNKS_PER_SECOND:g} chunks/s for {SECONDS:g} s per turn",
            "time_scale": SCALE,
            "naive": f"one edit per {NAIVE_INTERVAL:g} s per message, discord.py's own 429 handling",
        },
        "rows": rows,
        "summary": summary,
    }
    (RESULTS / "discord.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(rows, RESULTS / "discord.png")
    for line in summary:
        print(line)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
