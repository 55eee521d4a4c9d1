"""Discord streaming benchmark: Parley against llmcord's global edit throttle and a per-message throttle.

    python -m bench.discord_bench                  # 5 runs per cell, both readings, time ×4 (about 7 min)
    python -m bench.discord_bench --check          # then: one round in real time, stored beside it
    python -m bench.discord_bench --reading apart  # one reading of the channel bucket only

The real discord.py client talks to the loopback fake Discord API (tests/fakes/discord_api.py).
Each turn is a synthetic stream of ``CHUNKS_PER_SECOND`` chunks a second for ``SECONDS`` seconds,
so the figures are about Discord, not a model. 1 and 10 concurrent replies share one channel
(thread); 50 are 5 channels of 10. Every strategy meets the same fake, the same streams and the
same layout, and each handles 429s as it does in production.

Discord's limits, from the platform rather than from Parley's table
(https://discord.com/developers/docs/topics/rate-limits):

- Global: 50 requests per second per bot token, every route but the interaction endpoints
  (published; ``tests.fakes.discord_api.GLOBAL_LIMIT``), enforced by the fake over any sliding
  second, a 429 with ``"global": true`` past it.
- Per-route buckets are not published: Discord says to read them from the ``X-RateLimit-*``
  headers. For channel messages the headers are seen to say 5 per 5 s per channel, one bucket hash
  for creates and edits, and the two are counted apart (``tests.fakes.discord_api.CHANNEL_MESSAGES``
  cites the reports). Both readings run: "apart", what those reports observe (5 creates and 5
  edits per channel per fixed 5 s window), and "shared", one count of 5 for both (the stricter
  reading, and the one Parley's table takes); each reported in real ``X-RateLimit-*`` headers.
  Parley budgets its own table (``bots.discord.ratelimit``: 5 writes,
  creates and edits together, per 5 s per channel; 40/s with a burst of 2 bot-wide).
- The network: ``RTT`` (50 ms) round trip on every request, half before the fake handles it.

Time is compressed ×``SCALE`` (default 4) and all of it: the stream's chunk rate, the bucket
window, the global limit's window, the round trip, Parley's renderer interval and bot-wide rate,
the baselines' intervals (llmcord's ``EDIT_DELAY_SECONDS``, the typing indicator's 5 s). A 429's
wait compresses with them because it is computed from the compressed windows: the fake's
``retry_after`` and ``X-RateLimit-Reset-After`` are real seconds of the compressed clock, and
discord.py sleeps on exactly those (``discord/http.py``: ``Ratelimit.update`` reads
``X-Ratelimit-Reset-After``, ``HTTPClient.request`` sleeps ``data['retry_after']``), as Parley pauses
for the body's ``retry_after``. What does not compress: CPU time (the client, the fake and the
event loop share one interpreter; every real millisecond counts ×SCALE), the whole-second
``Retry-After`` header (read by neither client) and discord.py's 5xx back-off (no 5xx here).
``--check`` runs one round in real time to check that the compression does not change the figures.
Every time figure is reported in Discord seconds (measured × SCALE).

Strategies:

- **parley**: the product's renderer (:class:`core.render.Renderer`) on
  :class:`bots.discord.sink.DiscordSink` with :class:`bots.discord.ratelimit.ChannelBudgets`; the
  client's HTTP session draws every bot-token request from the bot-wide bucket
  (:func:`bots.discord.ratelimit.draw_global`, as ``DiscordFront`` does); 429s raised to the renderer.
- **llmcord**: what jakobdylanc/llmcord does (``llmcord.py`` at d0aa8d2, last changed in
  9717d70): ``EDIT_DELAY_SECONDS = 1`` (line 31) and one module-global ``last_task_time`` (line 51,
  ``global`` in ``on_message``, line 116) for every reply in every channel. Each reply is its own
  ``on_message`` task, inside ``async with new_msg.channel.typing()`` (line 279: a typing request
  at once and every 5 s). Per chunk it shows the text up to the previous chunk (lines 289-292); the
  first text is posted as a reply (lines 297, 315), and then a chunk edits when ``now -
  last_task_time >= EDIT_DELAY_SECONDS`` or the stream finished (lines 303-310), after sleeping
  ``EDIT_DELAY_SECONDS - time_delta`` (line 317, a no-op when negative) and awaiting the edit in the
  stream loop itself (line 318); then ``last_task_time = now`` (line 320). Nothing else spaces
  the writes: concurrent replies that read ``last_task_time`` before any of them sets it all edit,
  and discord.py's own 429 handling (pre-emptive waits on exhausted buckets, sleep on
  ``retry_after``, 5 tries) does the rest; an error ends the reply (lines 326-327). llmcord writes
  into an embed's description with a ``" ⚪"`` mark while streaming; here the text goes in
  ``content`` (the same route and bucket) under the turn's label line, so the probe can read it.
- **per-message**: the common per-message throttle: each reply's message is posted at once
  (``"…"``) and edited with its latest text at most once a second by a writer of its own, with
  discord.py's own 429 handling.

Measured per run: REST calls per reply (every request with the bot token once streaming
starts, 429s and typing included) and message writes per reply, 429s (per-channel and global),
characters lost (final message text against the answer), and freshness: for every chunk, the
delay from the moment the model produced it (its scheduled time: a consumer that falls behind
does not make it younger) to the fake storing a message that shows it, p50 and p95 over all
chunks. Cells (strategy × size) run ``RUNS`` times, interleaved in a rotating order; the tables
give the median of the runs and their range. Writes bench/results/discord.json and discord.png.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import logging
import os
import secrets
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCALE = 4.0  # time compression (--scale)
RUNS = 5  # runs per cell (--runs)
CHUNKS_PER_SECOND = 25.0
SECONDS = 8.0
CHUNK = "word "
RTT = 0.050  # the network's round trip, Discord seconds
SIZES = [(1, 1), (10, 1), (50, 5)]  # (concurrent replies, channels)
STRATEGIES = ("parley", "llmcord", "per-message")
BASELINES = ("llmcord", "per-message")
LLMCORD_EDIT_DELAY = 1.0  # llmcord.py EDIT_DELAY_SECONDS
LLMCORD_MARK = " ⚪"  # llmcord.py STREAMING_INDICATOR
TYPING_EVERY = 5.0  # discord.py's Typing context manager re-sends every 5 s
PER_MESSAGE_INTERVAL = 1.0

ANSWER = CHUNK * int(CHUNKS_PER_SECOND * SECONDS)


def _turn(i: int) -> Any:
    from core.events import TurnInfo

    return TurnInfo(f"turn{i:03d}", "bench", "Bench", "model", f"p{i}", f"Turn {i:03d}", "bench")


class Probe:
    """When each chunk was produced, and when the fake stored text showing it."""

    def __init__(self) -> None:
        self.produced: dict[str, list[tuple[int, float]]] = {}
        self.visible: dict[str, list[tuple[int, float]]] = {}
        self.final: dict[str, str] = {}

    def on_store(self, channel: int, message: int, content: str, t: float) -> None:
        head, _, body = content.partition("\n")
        if "Turn " not in head:
            return
        turn = "turn" + head.split("Turn ", 1)[1][:3]
        body = body.removesuffix(" …").removesuffix(LLMCORD_MARK)
        if body == "…":
            body = ""
        self.visible.setdefault(turn, []).append((len(body), t))
        self.final[turn] = body

    def freshness(self) -> list[float]:
        out = []
        for turn, produced in self.produced.items():
            vis = self.visible.get(turn, [])
            j = 0
            for n, tp in produced:
                while j < len(vis) and vis[j][0] < n:
                    j += 1
                if j < len(vis):
                    out.append(max(0.0, vis[j][1] - tp))
        return out

    def lost(self, turns: int) -> int:
        return sum(len(ANSWER) - len(os.path.commonprefix([ANSWER, self.final.get(f"turn{i:03d}", "")]))
                   for i in range(turns))


async def chunks(turn_ids: list[str], probe: Probe, scale: float) -> AsyncIterator[tuple[int, float]]:
    """Chunk k (1-based) at its scheduled time, for every turn in ``turn_ids``; behind schedule,
    at once. The scheduled time is when the model produced it (a stream a consumer does not read
    waits in the socket)."""
    n = int(CHUNKS_PER_SECOND * SECONDS)
    interval = 1.0 / (CHUNKS_PER_SECOND * scale)
    start = time.monotonic()
    for k in range(1, n + 1):
        due = start + k * interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for tid in turn_ids:
            probe.produced.setdefault(tid, []).append((k * len(CHUNK), due))
        yield k, due


async def synthetic(turns: list[Any], probe: Probe, scale: float) -> AsyncIterator[Any]:
    """A parallel discussion's events: every turn streams its chunks side by side."""
    from core.events import DiscussionStarted, TextDelta, TurnFinished, TurnStarted, TurnUsage

    yield DiscussionStarted("bench", "parallel", "q", [t.label for t in turns])
    for t in turns:
        yield TurnStarted(t)
    async for _k, _due in chunks([t.turn_id for t in turns], probe, scale):
        for t in turns:
            yield TextDelta(t.turn_id, CHUNK)
    for t in turns:
        yield TurnFinished(t, ANSWER, TurnUsage(), None, 0.0)


# --- strategies -----------------------------------------------------------------------------------


async def run_parley(client: Any, channels: list[int], per_channel: int, probe: Probe, scale: float
                     ) -> dict[str, Any]:
    from bots.discord.ratelimit import CHANNEL_WINDOW, ChannelBudgets, draw_global, global_bucket
    from bots.discord.sink import DiscordSink
    from core.budget import TokenBucket
    from core.render import Renderer

    # Parley's own table, its time compressed: the per-channel window ÷ scale (limit unchanged),
    # the bot-wide bucket's rate × scale (its burst unchanged).
    budgets = ChannelBudgets(window=CHANNEL_WINDOW / scale)
    bot = global_bucket()
    budgets.bot = TokenBucket(bot.rate * scale, bot.capacity, name=bot.name)
    assert draw_global(client, budgets.bot), "the client carries Parley's HTTP trace"
    renderers = []

    async def one(idx: int, channel: int) -> None:
        sink = DiscordSink(client, channel, budgets)
        sink.min_interval = DiscordSink.min_interval / scale
        r = Renderer(sink)
        renderers.append(r)
        turns = [_turn(idx * per_channel + i) for i in range(per_channel)]
        await r.consume(synthetic(turns, probe, scale))

    await asyncio.gather(*(one(i, ch) for i, ch in enumerate(channels)))
    return {"renderer_429s": sum(r.rate_limited for r in renderers), "lost_ops": sum(r.lost_ops for r in renderers)}


async def run_llmcord(client: Any, channels: list[int], per_channel: int, probe: Probe, scale: float
                      ) -> dict[str, Any]:
    """llmcord's streaming loop (see the module docstring for the lines it follows)."""
    from bots.discord.format import header

    delay = LLMCORD_EDIT_DELAY / scale
    state = {"last_task_time": 0.0}  # module-global in llmcord: one for every reply of the bot
    errors: list[str] = []

    class Typing:
        """discord.py's ``channel.typing()`` (``discord/context_managers.py``), its 5 s compressed:
        a typing request on entry, then one every 5 s until exit."""

        def __init__(self, channel_id: int) -> None:
            self.channel_id = channel_id

        async def _loop(self) -> None:
            with contextlib.suppress(Exception):
                while True:
                    await asyncio.sleep(TYPING_EVERY / scale)
                    await client.http.send_typing(self.channel_id)

        async def __aenter__(self) -> None:
            await client.http.send_typing(self.channel_id)
            self.task = asyncio.create_task(self._loop())

        async def __aexit__(self, *exc: object) -> None:
            self.task.cancel()

    async def on_message(t: Any, channel: Any) -> None:
        msg = None
        curr = None
        contents: list[str] = []
        n = int(CHUNKS_PER_SECOND * SECONDS)
        try:
            async with Typing(channel.id):
                async for k, _due in chunks([t.turn_id], probe, scale):
                    # The last chunk of an OpenAI-style stream carries the finish reason, no text.
                    for last in ((False,) if k < n else (False, True)):
                        prev, curr = curr or "", ("" if last else CHUNK)
                        new = prev if not last else prev + curr
                        if not contents and new == "":
                            continue
                        start_next = not contents
                        if start_next:
                            contents.append("")
                        contents[-1] += new
                        time_delta = time.monotonic() - state["last_task_time"]
                        ready = time_delta >= delay
                        if start_next or ready or last:
                            text = header(t) + "\n" + contents[-1] + ("" if last else LLMCORD_MARK)
                            if start_next:
                                msg = await channel.send(content=text)
                            else:
                                await asyncio.sleep(delay - time_delta)
                                assert msg is not None
                                await msg.edit(content=text)
                            state["last_task_time"] = time.monotonic()
        except Exception as e:  # llmcord: logging.exception(...), and the reply ends there
            errors.append(f"{type(e).__name__} {getattr(e, 'status', '')}".strip())

    tasks = []
    for idx, ch in enumerate(channels):
        channel = client.get_partial_messageable(ch)
        tasks += [on_message(_turn(idx * per_channel + i), channel) for i in range(per_channel)]
    await asyncio.gather(*tasks)
    return {"errors": len(errors), "error_kinds": dict(collections.Counter(errors))}


async def run_per_message(client: Any, channels: list[int], per_channel: int, probe: Probe, scale: float
                          ) -> dict[str, Any]:
    """One message per reply, edited with its latest text at most once per interval."""
    from bots.discord.format import header

    errors: list[str] = []

    class Reply:
        now = ""  # the text so far
        finished = False

    async def reply(t: Any, channel: Any) -> None:
        text = Reply()
        wake = asyncio.Event()

        async def writer() -> None:
            try:
                msg = await channel.send(content=header(t) + "\n…")
                shown = ""
                while True:
                    finished, latest = text.finished, text.now
                    if latest != shown or finished:
                        began = time.monotonic()
                        await msg.edit(content=header(t) + "\n" + latest + ("" if finished else " …"))
                        shown = latest
                        if finished:
                            return
                        await asyncio.sleep(max(0.0, began + PER_MESSAGE_INTERVAL / scale - time.monotonic()))
                    else:
                        wake.clear()
                        await wake.wait()
            except Exception as e:
                errors.append(f"{type(e).__name__} {getattr(e, 'status', '')}".strip())

        task = asyncio.create_task(writer())
        async for _k, _due in chunks([t.turn_id], probe, scale):
            text.now += CHUNK
            wake.set()
        text.finished = True
        wake.set()
        await task

    tasks = []
    for idx, ch in enumerate(channels):
        channel = client.get_partial_messageable(ch)
        tasks += [reply(_turn(idx * per_channel + i), channel) for i in range(per_channel)]
    await asyncio.gather(*tasks)
    return {"errors": len(errors), "error_kinds": dict(collections.Counter(errors))}


RUNNERS: dict[str, Callable[..., Any]] = {"parley": run_parley, "llmcord": run_llmcord, "per-message": run_per_message}


# --- one run ----------------------------------------------------------------------------------------


async def measure(strategy: str, turns: int, n_channels: int, *, scale: float, reading: str) -> dict[str, Any]:
    import discord

    from bots.discord.config import DiscordSettings, configure_api, make_client
    from tests.fakes.discord_api import CHANNEL_MESSAGES, GLOBAL_LIMIT, FakeDiscordAPI, snowflake

    app_id = snowflake()
    token = base64.b64encode(str(app_id).encode()).decode().rstrip("=") + "." + secrets.token_urlsafe(30)
    limit, window = CHANNEL_MESSAGES
    async with FakeDiscordAPI(token=token, app_id=app_id, channel_limit=(limit, window / scale),
                              edits_apart=reading == "apart", global_limit=GLOBAL_LIMIT, global_window=1.0 / scale,
                              latency=RTT / scale) as api:
        os.environ["DISCORD_API_URL"] = api.base_url
        settings = DiscordSettings()
        configure_api(settings)
        probe = Probe()
        api.on_store = probe.on_store
        # Parley's client carries its HTTP trace; the baselines use a plain discord.py client.
        client = make_client(settings) if strategy == "parley" else discord.Client(intents=discord.Intents.none())
        try:
            await client.login(token)
            guild = snowflake()
            channels = [snowflake() for _ in range(n_channels)]
            for ch in channels:
                api.add_channel(ch, guild)
            calls0, limited0, global0 = len(api.calls), api.limited, api.global_limited
            cpu0, t0 = time.process_time(), time.monotonic()
            extra = await RUNNERS[strategy](client, channels, turns // n_channels, probe, scale)
            wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        finally:
            await client.close()
        calls = api.calls[calls0:]
    writes = [c for c in calls if "/messages" in c.path and c.method in ("POST", "PATCH")]
    fresh = sorted(probe.freshness())
    p95 = (statistics.quantiles(fresh, n=20)[18] if len(fresh) >= 20 else max(fresh)) if fresh else None
    return {
        "reading": reading,
        "strategy": strategy,
        "turns": turns,
        "channels": n_channels,
        "calls_per_reply": round(len(calls) / turns, 2),
        "writes_per_reply": round(len(writes) / turns, 2),
        "http_429": api.limited - limited0,
        "global_429": api.global_limited - global0,
        "chars_lost": probe.lost(turns),
        "freshness_p50_s": round(statistics.median(fresh) * scale, 3) if fresh else None,
        "freshness_p95_s": round(p95 * scale, 3) if p95 is not None else None,
        "wall_s": round(wall * scale, 2),
        "cpu_share": round(cpu / wall, 2),
        **extra,
    }


# --- all runs, the summary and the chart -------------------------------------------------------------

#: The two readings of Discord's per-channel message bucket (see CHANNEL_MESSAGES in the fake).
READINGS = {
    "apart": "creates and edits counted apart (5 + 5 per 5 s per channel, one bucket hash): what bots observe",
    "shared": "creates and edits counted together (5 per 5 s per channel): the stricter reading",
}
KEYS = ("calls_per_reply", "writes_per_reply", "http_429", "global_429", "chars_lost", "freshness_p50_s",
        "freshness_p95_s", "wall_s", "cpu_share")


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cells = []
    for reading in READINGS:
        for turns, n_channels in SIZES:
            for strategy in STRATEGIES:
                runs = [r for r in rows if (r["reading"], r["strategy"], r["turns"]) == (reading, strategy, turns)]
                if not runs:
                    continue
                cell: dict[str, Any] = {"reading": reading, "strategy": strategy, "turns": turns,
                                        "channels": n_channels, "runs": len(runs)}
                for k in KEYS:
                    vals = [r[k] for r in runs if r.get(k) is not None]
                    if vals:
                        cell[k] = _stats(vals)
                errors: collections.Counter[str] = collections.Counter()
                for r in runs:
                    errors.update(r.get("error_kinds") or {})
                if errors:
                    cell["errors"] = dict(errors)
                cells.append(cell)
    return cells


def _fmt(s: dict[str, float], unit: str = "", digits: int = 2) -> str:
    def f(x: float) -> str:
        return f"{x:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{x:.0f}"

    if s["min"] == s["max"]:
        return f"{f(s['median'])}{unit}"
    return f"{f(s['median'])}{unit} ({f(s['min'])}–{f(s['max'])})"


def _ratios(by: dict[tuple[str, str, int], dict[str, Any]], reading: str) -> str:
    out = []
    for turns, _ in SIZES:
        p = by.get((reading, "parley", turns))
        if p is None:
            continue
        parts = []
        for b in BASELINES:
            c = by.get((reading, b, turns))
            if c is None:
                continue
            p50 = c["freshness_p50_s"]["median"] / p["freshness_p50_s"]["median"]
            p95 = c["freshness_p95_s"]["median"] / p["freshness_p95_s"]["median"]
            calls = c["calls_per_reply"]["median"] / p["calls_per_reply"]["median"]
            parts.append(f"{b} p50 ×{p50:.1f}, p95 ×{p95:.1f}, calls ×{calls:.1f}")
        out.append(f"{turns}: " + "; ".join(parts))
    return " | ".join(out)


def summarize(cells: list[dict[str, Any]], setup: dict[str, Any]) -> list[str]:
    by = {(c["reading"], c["strategy"], c["turns"]): c for c in cells}
    lines: list[str] = []
    for reading in READINGS:
        if not any(c["reading"] == reading for c in cells):
            continue
        if lines:
            lines.append("")
        lines += [
            f"Per-channel bucket: {READINGS[reading]}.",
            "",
            "| concurrent replies | strategy | REST calls/reply | 429s | chars lost | fresh p50 | fresh p95 |",
            "|---|---|---|---|---|---|---|",
        ]
        for turns, n_channels in SIZES:
            where = "1 channel" if n_channels == 1 else f"{n_channels} channels"
            for strategy in STRATEGIES:
                c = by.get((reading, strategy, turns))
                if c is None:
                    continue
                lines.append(
                    f"| {turns} ({where}) | {strategy} | {_fmt(c['calls_per_reply'], digits=1)} "
                    f"| {_fmt(c['http_429'], digits=0)} | {_fmt(c['chars_lost'], digits=0)} "
                    f"| {_fmt(c['freshness_p50_s'], ' s')} | {_fmt(c['freshness_p95_s'], ' s')} |"
                )
        lines += ["", "Baseline ÷ Parley (higher: staler, or more calls): " + _ratios(by, reading) + "."]
    lines += [
        "",
        f"Median of {setup['runs']} runs per cell (range in brackets), cells interleaved; time ×{setup['time_scale']:g}, "
        f"figures in Discord seconds; {setup['stream']}; global limit {setup['global']}; RTT {setup['rtt_ms']:g} ms. "
        "llmcord: one edit per second shared by every reply of the bot, edits awaited in the stream loop, typing "
        "indicator (jakobdylanc/llmcord `llmcord.py`); per-message: one edit per second per message; both with "
        "discord.py's own 429 handling. "
        f"Load average {setup['load_before']} before, {setup['load_after']} after (2 cores). "
        "Chart: `bench/results/discord.png`.",
    ]
    return lines


COLORS = {"parley": "#5865F2", "llmcord": "#ED4245", "per-message": "#FAA61A"}


def chart(cells: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    readings = [r for r in READINGS if any(c["reading"] == r for c in cells)]
    sizes = [t for t, _ in SIZES]
    fig, grid = plt.subplots(len(readings), 4, figsize=(17, 4.2 * len(readings)), squeeze=False)
    panels = (("freshness_p50_s", "Freshness p50, s"), ("freshness_p95_s", "Freshness p95, s"),
              ("http_429", "HTTP 429s"), ("calls_per_reply", "REST calls per reply"))
    width = 0.8 / len(STRATEGIES)
    by = {(c["reading"], c["strategy"], c["turns"]): c for c in cells}
    for row, reading in enumerate(readings):
        axes = grid[row]
        for k, strategy in enumerate(STRATEGIES):
            xs = [i + (k - (len(STRATEGIES) - 1) / 2) * width for i in range(len(sizes))]
            for ax, (key, _) in zip(axes, panels, strict=True):
                stats = [by.get((reading, strategy, s), {}).get(key) for s in sizes]
                med = [st["median"] if st else 0 for st in stats]
                lo = [st["median"] - st["min"] if st else 0 for st in stats]
                hi = [st["max"] - st["median"] if st else 0 for st in stats]
                ax.bar(xs, med, width, color=COLORS[strategy], label=strategy, yerr=[lo, hi], capsize=3,
                       error_kw={"elinewidth": 1})
        for ax, (_, name) in zip(axes, panels, strict=True):
            ax.set_xticks(range(len(sizes)), [f"{s} repl{'y' if s == 1 else 'ies'}" for s in sizes])
            ax.set_title(f"{name} — edits {reading}" if reading == "apart" else f"{name} — {reading} bucket",
                         fontsize=10)
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def run_all(runs: int, scale: float, readings: list[str]) -> list[dict[str, Any]]:
    rows = []
    order = [(rd, s, t, c) for rd in readings for t, c in SIZES for s in STRATEGIES]
    for run in range(runs):
        k = (run * len(STRATEGIES) + run) % len(order)  # rotate: no cell always first or after the same one
        for reading, strategy, turns, n_channels in order[k:] + order[:k]:
            row = await measure(strategy, turns, n_channels, scale=scale, reading=reading)
            row["run"] = run + 1
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _setup(runs: int, scale: float, load_before: str, elapsed: float) -> dict[str, Any]:
    from tests.fakes.discord_api import CHANNEL_MESSAGES, GLOBAL_LIMIT

    limit, window = CHANNEL_MESSAGES
    return {
        "bucket": {r: text for r, text in READINGS.items()},
        "channel_messages": f"{limit} per {window:g} s per channel",
        "global": f"{GLOBAL_LIMIT} requests per sliding second per bot token",
        "rtt_ms": RTT * 1000,
        "stream": f"{CHUNKS_PER_SECOND:g} chunks/s for {SECONDS:g} s per reply ({len(ANSWER)} characters)",
        "time_scale": scale,
        "runs": runs,
        "load_before": load_before,
        "load_after": _load(),
        "elapsed_s": round(elapsed, 1),
        "llmcord": "jakobdylanc/llmcord llmcord.py @ d0aa8d2: EDIT_DELAY_SECONDS = 1 with one global last_task_time, "
                   "edits awaited in the stream loop, typing indicator, discord.py's 429 handling",
        "per_message": f"one edit per {PER_MESSAGE_INTERVAL:g} s per message, discord.py's 429 handling",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--scale", type=float, default=SCALE)
    ap.add_argument("--reading", choices=("both", *READINGS), default="both",
                    help="how the fake counts a channel's creates and edits")
    ap.add_argument("--check", action="store_true",
                    help="one round in real time (creates and edits apart), stored as the compression check "
                         "in bench/results/discord.json next to the compressed results")
    args = ap.parse_args(argv if argv is not None else [])
    logging.getLogger("discord").setLevel(logging.CRITICAL)  # discord.py logs every 429 it sleeps on
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "discord.json"
    if args.check:
        args.runs, args.scale, args.reading = 1, 1.0, "apart"
    readings = list(READINGS) if args.reading == "both" else [args.reading]
    load_before = _load()
    t0 = time.monotonic()
    rows = asyncio.run(run_all(args.runs, args.scale, readings))
    setup = _setup(args.runs, args.scale, load_before, time.monotonic() - t0)
    cells = aggregate(rows)
    if args.check:
        result = json.loads(path.read_text())
        result["compression_check"] = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "setup": setup,
                                       "cells": cells, "rows": rows}
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        for line in summarize(cells, setup):
            print(line)
        return result
    summary = summarize(cells, setup)
    result = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "setup": setup, "cells": cells, "rows": rows,
              "summary": summary}
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    chart(cells, RESULTS / "discord.png",
          f"Discord: Parley vs llmcord's global 1 edit/s and a per-message 1 edit/s "
          f"(median and range of {args.runs} runs per cell)")
    for line in summary:
        print(line)
    print(f"elapsed {setup['elapsed_s']:.0f} s")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(sys.argv[1:])
