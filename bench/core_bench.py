"""Core benchmarks, end to end: request in, text visible in a sink.

    python -m bench.core_bench            # every cell, 5 runs each
    python -m bench.core_bench --quick    # one run per cell (a look, not a result)
    python -m bench.core_bench --only 500 --runs 1 --profile out.prof   # cProfile one cell

Every turn goes the way a front-end sends it: ``Engine.run`` (planning, the
SQLite store on its writer thread, retries, deadlines) -> :class:`Renderer`
(coalescing, rollover, budgets, the post ledger in the store) -> a recording
:class:`Sink` that applies each post and edit in memory, with a Slack-sized
message limit, a Slack-like edit interval and budgets that never bind. At the
end the sink must show every character each turn streamed: 0 lost.

The fake LLM server runs in another process pinned to the other core; Parley's
process is pinned to one core (its writer thread too), so the figures are the
cost of one core. The server reports its own event-loop lag, so a server that
fell behind is seen, not taken for Parley's speed.

Measures (each cell at least 5 runs; the runs of all cells are interleaved so
that load from elsewhere on the machine spreads over every cell; medians of the
per-run figures with their min-max spread):

- concurrency: N turns streaming 50 chunks/s each, arriving over RAMP seconds;
  event-loop lag p50/p99 from a 10 ms probe over the whole cell; time to first
  text measured by the caller (request in -> first text event out of the
  engine, at the renderer) and to first text visible in the sink; the same
  first-token time read by bare aiohttp clients of the same stream from the
  same server in the same cell (ratio);
- memory per active turn: N turns that each streamed the same 1,200 characters
  and then wait (keep-alives), all at the same point, then ``gc.collect()``;
  traced Python memory (tracemalloc) over a baseline, slope over N by least
  squares. RSS is reported beside it, but it moves in allocator arenas and
  pages, so it is not the figure;
- single turn at idle: caller's time to first text and total time vs. a bare
  aiohttp reader, interleaved pairs;
- compare: wall time of a compare of k providers / its slowest provider alone;
- events/s: one unpaced turn through renderer and sink;
- console render cost per frame.

Writes bench/results/core.json (with ``summary`` lines for the README) and core.png.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import itertools
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RAMP = 2.0  # seconds over which a cell's turns arrive: a team's requests do not land in one ms
RUNS = 5
CELLS = (100, 250, 500, 750)
MEMORY_SIZES = (100, 250, 500, 750)
TARGET_TURNS, TARGET_P99 = 500, 50.0

LIVE_TEXT = "token " * 400  # 2,400 characters in 400 chunks of 6, one every 20 ms: 50 chunks/s for 8 s
MEMORY_CHUNKS = 200  # memory cells: 1,200 characters at 50 chunks/s, then keep-alives until measured

# model id -> scenario kwargs, served by one fake server process
SCENARIOS: dict[str, dict[str, Any]] = {
    "ttft": {"text": "word " * 20, "chunk_chars": 5, "first_token_delay": 0.05, "chunk_delay": 0.005},
    "flood": {"text": "x" * 20000, "chunk_chars": 4, "chunk_delay": 0.0},
    "live": {"text": LIVE_TEXT, "chunk_chars": 6, "first_token_delay": 0.02, "chunk_delay": 0.02},
    "held": {"text": LIVE_TEXT, "chunk_chars": 6, "first_token_delay": 0.02, "chunk_delay": 0.02,
             "stall_after_chunks": MEMORY_CHUNKS, "keepalive_interval": 5.0},
}
for i, delay in enumerate([0.004, 0.006, 0.008, 0.010, 0.012, 0.014, 0.016, 0.020]):
    SCENARIOS[f"speed{i}"] = {"text": "answer " * 40, "chunk_chars": 7, "first_token_delay": 0.05,
                              "chunk_delay": delay}


# --- the fake server, in its own process on the other core ----------------------------------------
class PacedServer:
    """An OpenAI-style streaming server that keeps its pace at any number of streams.

    It sends what tests/fakes/llm_server.py sends (the same chunk objects, a
    finish chunk, usage with ``choices: []``, ``[DONE]``, chunked transfer
    encoding, keep-alive connections), but its frames are encoded once per
    scenario and one ticker writes every stream's due chunks: chunk ``i`` of a
    stream is due at ``start + first_token_delay + i * chunk_delay``, so a
    stream keeps 50 chunks/s however late one tick runs, and the server spends
    a write per chunk, not a task wake-up and a JSON encode. (Run with the test
    server, 500 streams meant for 50 chunks/s got 35: each sleeps 20 ms after a
    write, and its loop lagged 50 ms at p99, which slows the streams and
    flatters the client.)
    """

    TICK = 0.002

    def __init__(self, scenarios: dict[str, dict[str, Any]]) -> None:
        self.frames = {m: self._frames(m, kw) for m, kw in scenarios.items()}
        self.scenarios = scenarios
        self.due: list[tuple[float, int, Any]] = []  # (when, seq, stream)
        self.seq = 0

    @staticmethod
    def _frames(model: str, sc: dict[str, Any]) -> list[bytes]:
        text, n = sc["text"], max(1, sc.get("chunk_chars", 4))
        chunks = [text[i : i + n] for i in range(0, len(text), n)]

        def frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
            obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return _chunked(f"data: {json.dumps(obj)}\n\n".encode())

        usage = {"prompt_tokens": 20, "completion_tokens": max(1, len(text) // 4),
                 "total_tokens": 20 + max(1, len(text) // 4), "prompt_tokens_details": {"cached_tokens": 0}}
        tail = frame({}, "stop") + _chunked(("data: " + json.dumps(
            {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": [],
             "usage": usage}) + "\n\ndata: [DONE]\n\n").encode()) + b"0\r\n\r\n"
        # frames[0]: the role chunk; frames[1..]: one per text chunk; the last carries the end.
        return [frame({"role": "assistant", "content": ""}), *(frame({"content": c}) for c in chunks), tail]

    def start_stream(self, transport: asyncio.Transport, model: str, done: Any) -> None:
        sc = self.scenarios[model]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                        b"transfer-encoding: chunked\r\n\r\n")
        stream = {"t": transport, "frames": self.frames[model], "i": 0, "done": done,
                  "t0": time.monotonic() + sc.get("first_token_delay", 0.0),
                  "every": sc.get("chunk_delay", 0.0), "stall": sc.get("stall_after_chunks"),
                  "keepalive": sc.get("keepalive_interval", 1.0)}
        self._push(stream["t0"], stream)

    def _push(self, when: float, stream: Any) -> None:
        import heapq

        self.seq += 1
        heapq.heappush(self.due, (when, self.seq, stream))

    async def ticker(self) -> None:
        import heapq

        while True:
            await asyncio.sleep(self.TICK)
            now = time.monotonic()
            while self.due and self.due[0][0] <= now:
                _, _, s = heapq.heappop(self.due)
                t = s["t"]
                if t.is_closing():
                    continue
                frames, every = s["frames"], s["every"]
                if s["stall"] is not None and s["i"] > s["stall"]:
                    t.write(_chunked(b": keep-alive\n\n"))
                    self._push(now + s["keepalive"], s)
                    continue
                if not every:  # unpaced: everything at once
                    t.write(b"".join(frames[s["i"]:]))
                    s["i"] = len(frames)
                else:
                    t.write(frames[s["i"]])
                    s["i"] += 1
                if s["i"] >= len(frames):
                    s["done"]()
                else:
                    # chunk i (text chunk i-1) at t0 + (i-1) * every: no drift from late ticks
                    self._push(s["t0"] + max(0, s["i"] - 1) * every, s)


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a request, a stream, the next request."""

    def __init__(self, server: PacedServer) -> None:
        self.server = server
        self.buf = b""
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next()

    def _next(self) -> None:
        if self.busy or b"\r\n\r\n" not in self.buf:
            return
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for h in lines[1:]:
            k, _, v = h.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        if len(rest) < length:
            return
        body, self.buf = rest[:length], rest[length:]
        method, path, _ = lines[0].split(" ", 2)
        assert self.transport is not None
        if method == "GET":
            payload = json.dumps({"object": "list", "data": [{"id": m} for m in self.server.scenarios]}).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(payload), payload))
            return self._next()
        self.busy = True
        self.server.start_stream(self.transport, str(json.loads(body).get("model")), self._done)

    def _done(self) -> None:
        self.busy = False
        self._next()


def _serve(port_q: Any, cmd: Any, scenarios: dict[str, dict[str, Any]]) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {(os.cpu_count() or 2) - 1})

    async def go() -> None:
        loop = asyncio.get_running_loop()
        paced = PacedServer(scenarios)
        srv = await loop.create_server(lambda: _Conn(paced), "127.0.0.1", 0, backlog=4096)
        port = srv.sockets[0].getsockname()[1]
        samples: list[float] = []

        async def probe() -> None:
            while True:
                t = time.perf_counter()
                await asyncio.sleep(0.01)
                samples.append((time.perf_counter() - t - 0.01) * 1000)

        def commands() -> None:  # "mark": forget the samples so far; "lag": report since the mark
            while True:
                what = cmd.recv()
                if what == "mark":
                    loop.call_soon_threadsafe(samples.clear)
                elif what == "lag":
                    cmd.send(_pct(list(samples)))

        tasks = [loop.create_task(probe()), loop.create_task(paced.ticker())]
        threading.Thread(target=commands, daemon=True).start()
        port_q.put(f"http://127.0.0.1:{port}/v1")
        await asyncio.Event().wait()
        del tasks

    asyncio.run(go())


class FakeServer:
    def __init__(self, base_url: str, conn: Any) -> None:
        self.base_url = base_url
        self.conn = conn

    def mark(self) -> None:
        self.conn.send("mark")

    def lag(self) -> dict[str, float]:
        self.conn.send("lag")
        return self.conn.recv()  # type: ignore[no-any-return]


@contextmanager
def fake_server() -> Iterator[FakeServer]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(q, theirs, SCENARIOS), daemon=True)
    proc.start()
    try:
        yield FakeServer(q.get(timeout=30), ours)
    finally:
        proc.terminate()
        proc.join(5)


# --- Parley, wired as a front-end wires it ---------------------------------------------------------
def _config(base_url: str, tmp: Path) -> Path:
    rows = []
    for model in SCENARIOS:
        rows.append(
            f'[providers.b{model}]\nlabel = "Bench {model}"\nbase_url = "{base_url}"\n'
            f'key_env = "BENCH_KEY"\ndefault_model = "{model}"\n[providers.b{model}.models.{model}]\n'
            "input = 1.0\noutput = 2.0\n"
        )
    path = tmp / "bench.toml"
    path.write_text("\n".join(rows))
    return path


def _services(base_url: str, tmp: Path):  # type: ignore[no-untyped-def]
    os.environ.update(
        PARLEY_CONFIG=str(_config(base_url, tmp)),
        PARLEY_DB=str(tmp / "bench.db"),
        BENCH_KEY="bench-key-0123456789",
        PARLEY_MAX_TURNS="2000",
    )
    os.environ.pop("PARLEY_DATABASE_URL", None)
    os.environ.pop("PARLEY_REDIS_URL", None)
    from core.config import Settings
    from core.services import build_services

    return build_services(Settings())


_CLASSES: dict[str, Any] = {}


def _sink_class():  # type: ignore[no-untyped-def]
    if "sink" in _CLASSES:
        return _CLASSES["sink"]
    from core.budget import WindowBudget
    from core.sink import Frame, Sink

    class RecordingSink(Sink):
        """Applies every post and edit in memory: what the channel would show.

        Slack's sizes (a message of at most ~4,000 characters, the Slack sink's
        0.8 s between edits of one message); the budgets are window budgets as
        the platforms' are, shared by every sink of a cell, and large enough
        that they never bind (the cost of spending them is still paid)."""

        limit = 4000
        min_interval = 0.8
        front_end = "bench"
        destination = "bench-channel"

        def __init__(self, post_budget: WindowBudget, edit_budget: WindowBudget) -> None:
            self.post_budget = post_budget
            self.edit_budget = edit_budget
            self.messages: dict[int, Frame] = {}
            self.first_visible: dict[str, float] = {}
            self.ops = 0

        async def post(self, frame: Frame) -> int:
            assert len(frame.text) <= self.limit
            ref = len(self.messages)
            self.messages[ref] = frame
            self._seen(frame)
            return ref

        async def edit(self, ref: int, frame: Frame) -> None:
            assert len(frame.text) <= self.limit
            self.messages[ref] = frame
            self._seen(frame)

        def _seen(self, frame: Frame) -> None:
            self.ops += 1
            if frame.raw and frame.turn.turn_id not in self.first_visible:
                self.first_visible[frame.turn.turn_id] = time.perf_counter()

        def record(self, ref: int) -> dict[str, Any]:
            return {"message": ref}  # so the ledger keeps its rows in the store, as a front-end's do

        def shown(self, ref: int) -> str:
            return self.messages[ref].text

        def visible(self) -> dict[str, str]:
            """Each turn's text as the messages show it, in order."""
            out: dict[str, list[tuple[int, str]]] = {}
            for frame in self.messages.values():
                out.setdefault(frame.turn.turn_id, []).append((frame.part, frame.raw))
            return {tid: "".join(raw for _, raw in sorted(parts)) for tid, parts in out.items()}

    _CLASSES["sink"] = RecordingSink
    return RecordingSink


def _budgets():  # type: ignore[no-untyped-def]
    from core.budget import WindowBudget

    return (WindowBudget(1_000_000, 60.0, paced=False, name="post"),
            WindowBudget(1_000_000, 60.0, paced=False, name="edit"))


def _renderer_class():  # type: ignore[no-untyped-def]
    if "renderer" in _CLASSES:
        return _CLASSES["renderer"]
    from core.render import Renderer

    class TimedRenderer(Renderer):
        """The renderer, noting when the first text event of each turn reached it."""

        first_text: float | None = None
        finished: float | None = None

        def append(self, turn_id: str, text: str) -> None:
            if self.first_text is None:
                self.first_text = time.perf_counter()
            super().append(turn_id, text)

        def finish(self, *args: Any, **kw: Any) -> None:
            self.finished = time.perf_counter()
            super().finish(*args, **kw)

    _CLASSES["renderer"] = TimedRenderer
    return TimedRenderer


_THREADS = itertools.count()


class Turn:
    __slots__ = ("t_request", "t_first_text", "t_first_visible", "t_finished", "t_done", "ok", "expected", "shown")

    def __init__(self, expected: str) -> None:
        self.t_request = self.t_first_text = self.t_first_visible = self.t_finished = self.t_done = math.nan
        self.ok = False
        self.expected = expected
        self.shown = ""


async def discuss(services, text: str, expected: str, budgets, *, keep: list | None = None) -> Turn:  # type: ignore[no-untyped-def]
    """One request from the caller's side: Engine.run -> Renderer (with the store's post
    ledger) -> the recording sink, as :func:`core.threads.discuss_in_thread` wires them."""
    from core.commands import parse
    from core.events import DiscussionStarted
    from core.ledger import Ledger

    turn = Turn(expected)
    turn.t_request = time.perf_counter()
    command, rest = text.split(" ", 1)
    # A new thread of its own, as a slash command starts one: its (empty) history is read.
    conversation = f"bench:{next(_THREADS)}"
    events = services.engine.run(parse(command, rest), conversation=conversation, front_end="bench")
    first = await anext(events)
    assert isinstance(first, DiscussionStarted)
    sink = _sink_class()(*budgets)
    ledger = Ledger(services.store, first.discussion_id, sink)
    renderer = _renderer_class()(sink, ledger=ledger, metrics=services.metrics)
    if keep is not None:
        keep.append(renderer)

    async def prepend():  # type: ignore[no-untyped-def]
        yield first
        async for ev in events:
            yield ev

    try:
        final = await renderer.consume(prepend())
    finally:
        await events.aclose()
    turn.t_done = time.perf_counter()
    turn.t_first_text = renderer.first_text if renderer.first_text is not None else math.nan
    turn.t_finished = renderer.finished if renderer.finished is not None else math.nan
    turn.t_first_visible = min(sink.first_visible.values(), default=math.nan)
    shown = sink.visible()
    turn.shown = next(iter(shown.values()), "")
    turn.ok = final is not None and final.status == "finished"
    return turn


async def bare_first_token(client: aiohttp.ClientSession, base_url: str, model: str,
                           *, whole: bool = True) -> tuple[float, float]:
    """The floor: a bare aiohttp reader of the same stream, looking for the first content
    bytes only. Returns (first token, total) in ms; ``whole=False`` leaves at the first token."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft = math.nan
    async with client.post(base_url + "/chat/completions", json=body) as r:
        async for line in r.content:
            if ttft != ttft and b'"content": "' in line and b'"content": ""' not in line:
                ttft = (time.perf_counter() - t0) * 1000
                if not whole:
                    break
    return ttft, (time.perf_counter() - t0) * 1000


# --- measures ----------------------------------------------------------------------------------------
def _pct(xs: list[float]) -> dict[str, float]:
    xs = sorted(x for x in xs if x == x)
    if not xs:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan, "n": 0}

    def q(p: float) -> float:
        return xs[min(len(xs) - 1, max(0, math.ceil(p * len(xs)) - 1))]

    return {"p50": round(q(0.5), 2), "p99": round(q(0.99), 2), "max": round(xs[-1], 2), "n": len(xs)}


def spread(runs: list[float], digits: int = 2) -> dict[str, Any]:
    """Median of the runs, with their minimum and maximum."""
    xs = [x for x in runs if x == x]
    if not xs:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {"median": round(statistics.median(xs), digits), "min": round(min(xs), digits),
            "max": round(max(xs), digits), "runs": [round(x, digits) for x in xs]}


async def _lag_probe(stop: asyncio.Event, samples: list[float], interval: float = 0.01,
                     at: list[float] | None = None) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(interval)
        samples.append((time.perf_counter() - t - interval) * 1000)
        if at is not None:
            at.append(t)


def _phases(samples: list[float], at: list[float], t0: float, first_done: float) -> dict[str, float]:
    """Lag p99 while turns arrive (0 to RAMP s), while all stream (RAMP + 0.5 s to the first
    finish) and while they finish (after that): where the lag comes from."""
    arriving = [x for x, t in zip(samples, at, strict=True) if t - t0 <= RAMP]
    steady = [x for x, t in zip(samples, at, strict=True) if RAMP + 0.5 <= t - t0 and t < first_done]
    ending = [x for x, t in zip(samples, at, strict=True) if t >= first_done]
    return {"lag_p99_arriving_ms": _pct(arriving)["p99"], "lag_p99_streaming_ms": _pct(steady)["p99"],
            "lag_p99_finishing_ms": _pct(ending)["p99"]}


def _cpu() -> dict[str, float]:
    """This process's CPU seconds (main thread, other threads) and the seconds its threads
    waited, runnable, for a CPU that something else held (another process on our core:
    a run disturbed by the machine, not by Parley). From /proc/self/task/*/{stat,schedstat}."""
    tick = os.sysconf("SC_CLK_TCK")
    main, other, waited = 0.0, 0.0, 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                waited += int(f.read().split()[1]) / 1e9
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / tick
        if int(tid) == os.getpid():
            main += cpu
        else:
            other += cpu
    return {"main": main, "threads": other, "waited": waited}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return math.nan


async def _quiet(services) -> None:  # type: ignore[no-untyped-def]
    """Between cells: the store's queue drained, garbage collected, a breath."""
    await services.store.settled()
    gc.collect()
    await asyncio.sleep(0.5)


async def cell_concurrency(services, server: FakeServer, n: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """One run of one cell: N turns at 50 chunks/s, end to end; bare clients beside them."""
    await _quiet(services)
    budgets = _budgets()
    n_bare = max(5, n // 50)
    samples: list[float] = []
    sampled_at: list[float] = []
    stop = asyncio.Event()
    base_rss = _rss_mb()
    peak = [base_rss]
    server.mark()
    cpu0 = _cpu()
    t0 = time.perf_counter()
    probe = asyncio.create_task(_lag_probe(stop, samples, at=sampled_at))

    async def one(i: int) -> Turn:
        await asyncio.sleep(RAMP * i / n)
        t = await discuss(services, "ask provider:blive hi", LIVE_TEXT, budgets)
        peak[0] = max(peak[0], _rss_mb())
        return t

    async def bare(client: aiohttp.ClientSession, i: int) -> float:
        await asyncio.sleep(RAMP * (i + 0.5) / n_bare)
        return (await bare_first_token(client, server.base_url, "live", whole=False))[0]

    async with aiohttp.ClientSession() as client:
        turns, bares = await asyncio.gather(
            asyncio.gather(*(one(i) for i in range(n))),
            asyncio.gather(*(bare(client, i) for i in range(n_bare))),
        )
    wall = time.perf_counter() - t0
    stop.set()
    await probe
    cpu = {k: v - cpu0[k] for k, v in _cpu().items()}
    server_lag = server.lag()
    lag = _pct(samples)
    ttft = _pct([(t.t_first_text - t.t_request) * 1000 for t in turns])
    visible = _pct([(t.t_first_visible - t.t_request) * 1000 for t in turns])
    bare_ttft = _pct(bares)
    lost = sum(max(0, len(t.expected) - len(t.shown)) for t in turns)
    wrong = sum(t.shown != t.expected for t in turns)
    streams = [t.t_done - t.t_first_text for t in turns]
    out = {
        "n": n, "ok": sum(t.ok for t in turns), "wall_s": round(wall, 2),
        "lag_p50_ms": lag["p50"], "lag_p99_ms": lag["p99"], "lag_max_ms": lag["max"],
        "ttft_caller_p50_ms": ttft["p50"], "ttft_caller_p99_ms": ttft["p99"],
        "visible_p50_ms": visible["p50"], "visible_p99_ms": visible["p99"],
        "bare_ttft_p50_ms": bare_ttft["p50"], "bare_ttft_p99_ms": bare_ttft["p99"],
        "ttft_ratio_p50": round(ttft["p50"] / bare_ttft["p50"], 3) if bare_ttft["p50"] else None,
        "stream_s_p50": round(statistics.median(streams), 3),
        "chars_lost": lost, "turns_not_exact": wrong,
        "rss_delta_mb": round(peak[0] - base_rss, 1),
        "cpu_loop_share": round(cpu["main"] / wall, 3),
        "cpu_us_per_chunk": round(cpu["main"] * 1e6 / (n * (len(LIVE_TEXT) // 6)), 1),
        "cpu_other_threads_s": round(cpu["threads"], 2),
        "runqueue_wait_s": round(cpu["waited"], 2),
        "server_lag_p99_ms": server_lag["p99"],
        **_phases(samples, sampled_at, t0, min(t.t_finished for t in turns)),
    }
    return out


async def cell_memory(services, server: FakeServer, n: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """N turns, each holding the same 1,200 streamed characters: traced memory over a baseline."""
    await _quiet(services)
    budgets = _budgets()
    renderers: list[Any] = []
    want = MEMORY_CHUNKS * 6
    tasks: list[asyncio.Task[Turn]] = []

    gc.collect()
    base_traced = tracemalloc.get_traced_memory()[0]
    base_rss = _rss_mb()
    for i in range(n):
        tasks.append(asyncio.create_task(discuss(services, "ask provider:bheld hi", LIVE_TEXT, budgets,
                                                 keep=renderers)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # arrivals spread a little, as in the lag cells
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(renderers) == n and all(
            sum(v.length for v in r.views.values()) >= want and all(
                not v.dirty.is_set() for v in r.views.values()) for r in renderers
        ):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # the last edits out
    await services.store.settled()
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - base_traced
    rss = _rss_mb() - base_rss
    reached = sum(sum(v.length for v in r.views.values()) >= want for r in renderers)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"n": n, "reached": reached, "traced_kb": round(traced / 1024, 1),
            "traced_kb_per_turn": round(traced / 1024 / n, 2),
            "rss_mb": round(rss, 1), "rss_kb_per_turn": round(rss * 1024 / n, 2)}


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


async def run_idle_ttft(services, server: FakeServer, pairs: int = 20) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Interleaved pairs at idle: the bare reader, then Parley, on the same scenario."""
    budgets = _budgets()
    expected = SCENARIOS["ttft"]["text"]
    raw: list[tuple[float, float]] = []
    ours: list[tuple[float, float]] = []
    async with aiohttp.ClientSession() as client:
        for i in range(pairs + 3):
            r = await bare_first_token(client, server.base_url, "ttft")
            t = await discuss(services, "ask provider:bttft hi", expected, budgets)
            assert t.ok and t.shown == expected, "the idle turn lost text"
            if i >= 3:  # warm-up pairs left out
                raw.append(r)
                ours.append(((t.t_first_text - t.t_request) * 1000, (t.t_finished - t.t_request) * 1000,
                             (t.t_done - t.t_request) * 1000))
    med = statistics.median
    r_ttft, r_total = med(x[0] for x in raw), med(x[1] for x in raw)
    p_ttft, p_total, p_shown = med(x[0] for x in ours), med(x[1] for x in ours), med(x[2] for x in ours)
    return {"raw_ttft_ms": r_ttft, "parley_ttft_ms": p_ttft, "ttft_overhead_ms": p_ttft - r_ttft,
            "ttft_ratio": p_ttft / r_ttft, "raw_total_ms": r_total, "parley_total_ms": p_total,
            "total_ratio": p_total / r_total, "all_shown_ms": p_shown}


async def run_compare(services) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Wall time of a compare of k providers over the slowest of them alone (the floor)."""
    from core.events import DiscussionFinished

    async def wall(text: str) -> float:
        from core.commands import parse

        command, rest = text.split(" ", 1)
        evs = [ev async for ev in services.engine.run(parse(command, rest))]
        return next(e for e in evs if isinstance(e, DiscussionFinished)).total.wall_ms or math.nan

    slowest = await wall("ask provider:bspeed7 hi")
    out = {}
    for k in (2, 4, 8):
        names = [f"bspeed{i}" for i in range(8 - k, 8)]  # always includes the slowest
        out[str(k)] = await wall(f"compare providers:{','.join(names)} hi") / slowest
    return out


async def run_events(services) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One unpaced turn (5,000 chunks) through renderer and sink: events per second."""
    expected = SCENARIOS["flood"]["text"]
    t = await discuss(services, "ask provider:bflood hi", expected, _budgets())
    assert t.shown == expected
    # Until the engine's last event reached the renderer (the sink's last edit waits for its interval).
    return {"events_per_second": 5000 / (t.t_finished - t.t_first_text)}


def run_console_render() -> dict[str, float]:
    from rich.console import Console

    from bots.console.view import ConsoleView
    from core.events import TurnInfo
    from core.sink import Frame

    out = {}
    for n in (1, 3, 8):
        view = ConsoleView()
        for i in range(n):
            t = TurnInfo(turn_id=str(i), provider="p", provider_label="P", model="m", stage="answer")
            view.frames[i] = Frame(t, ("Some streamed **markdown** text. " * 60), "", 1, "streaming")
        console = Console(file=io.StringIO(), width=160, height=50, force_terminal=True)
        frames = 30
        t0 = time.perf_counter()
        for _ in range(frames):
            console.print(view.render())
        out[str(n)] = (time.perf_counter() - t0) / frames * 1000
    return out


# --- the whole run -------------------------------------------------------------------------------------
def _collect(per_run: list[dict[str, Any]], keys: list[str], digits: int = 2) -> dict[str, Any]:
    return {k: spread([r[k] for r in per_run if r.get(k) is not None], digits) for k in keys}


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    # Leave the process as it was found: later benchmarks in the same run must not
    # inherit this one's config file (deleted with tmp) or its CPU pinning.
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
    cells = [int(c) for c in args.only.split(",")] if args.only else list(CELLS)
    res: dict[str, Any] = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp, fake_server() as server:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {0})  # Parley on one core (its threads start after this), the server on the other
        services = _services(server.base_url, Path(tmp))
        try:
            if not args.only:
                print("  single turn at idle…", flush=True)
                idle = [await run_idle_ttft(services, server) for _ in range(args.runs)]
                res["idle"] = _collect(idle, list(idle[0]))
                print(f"    {res['idle']['ttft_ratio']}", flush=True)
                print("  compare…", flush=True)
                comp = [await run_compare(services) for _ in range(args.runs)]
                res["compare"] = _collect(comp, list(comp[0]), 3)
                print("  events/s…", flush=True)
                evs = [await run_events(services) for _ in range(args.runs)]
                res["events"] = _collect(evs, list(evs[0]), 0)
            print("  concurrency…", flush=True)
            runs: dict[int, list[dict[str, Any]]] = {n: [] for n in cells}
            for r in range(args.runs):
                for n in cells:
                    if args.profile and n == cells[-1] and r == args.runs - 1:
                        import cProfile

                        prof = cProfile.Profile()
                        prof.enable()
                        out = await cell_concurrency(services, server, n)
                        prof.disable()
                        prof.dump_stats(args.profile)
                    else:
                        out = await cell_concurrency(services, server, n)
                    runs[n].append(out)
                    print(f"    run {r + 1} {n}: {out}", flush=True)
            keys = [k for k in runs[cells[0]][0] if k != "n"]
            res["concurrency"] = {str(n): _collect(runs[n], keys) for n in cells}
            if not args.only and not args.no_memory:
                print("  memory per active turn…", flush=True)
                tracemalloc.start()
                await cell_memory(services, server, 50)  # warm-up: free lists and pools first filled while traced
                mem = []
                for n in MEMORY_SIZES:
                    m = await cell_memory(services, server, n)
                    mem.append(m)
                    print(f"    {m}", flush=True)
                tracemalloc.stop()
                ns = [m["n"] for m in mem]
                res["memory"] = {
                    "cells": mem,
                    "traced_kb_per_turn_slope": round(_slope(ns, [m["traced_kb"] for m in mem]), 2),
                    "rss_kb_per_turn_slope": round(_slope(ns, [m["rss_mb"] * 1024 for m in mem]), 2),
                }
        finally:
            await services.aclose()
    if not args.only:
        con = [run_console_render() for _ in range(args.runs)]
        res["console_render"] = _collect(con, list(con[0]))
    res["load_after"] = os.getloadavg()
    return res


def _fmt(s: dict[str, Any], unit: str = "") -> str:
    if s.get("median") is None:
        return "—"
    return f"{s['median']:g}{unit} ({s['min']:g}–{s['max']:g})"


def summarize(res: dict[str, Any], runs: int) -> list[str]:
    conc = res["concurrency"]
    carried = max((int(k) for k, v in conc.items()
                   if v["lag_p99_ms"]["median"] is not None and v["lag_p99_ms"]["median"] < TARGET_P99
                   and v["ok"]["min"] == int(k) and v["chars_lost"]["max"] == 0), default=0)
    at = conc.get(str(TARGET_TURNS)) or conc[max(conc, key=int)]
    n_at = TARGET_TURNS if str(TARGET_TURNS) in conc else max(int(k) for k in conc)
    lines = [
        f"End to end (Engine.run → Renderer → recording sink, SQLite store on), one core; medians of "
        f"{runs} runs with (min–max). Load average {res['load_before'][0]:.2f} before, "
        f"{res['load_after'][0]:.2f} after.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| concurrent turns (50 chunks/s each, arriving over {RAMP:g} s) with loop-lag p99 < "
        f"{TARGET_P99:g} ms and 0 characters lost | {carried} | ≥ {TARGET_TURNS} |",
    ]
    for k, v in conc.items():
        lines.append(
            f"| {k} turns: loop lag p50 / p99 | {_fmt(v['lag_p50_ms'], ' ms')} / {_fmt(v['lag_p99_ms'], ' ms')} "
            f"| p99 < {TARGET_P99:g} ms |")
    if "before" in res:
        for k, v in res["before"]["concurrency"].items():
            lines.append(f"| {k} turns, before the per-chunk changes (same bench, {res['before']['runs']} runs, "
                         f"{res['before']['date']}): loop lag p50 / p99 | {_fmt(v['lag_p50_ms'], ' ms')} / "
                         f"{_fmt(v['lag_p99_ms'], ' ms')} | — |")
        b, a = res["before"]["concurrency"].get(str(n_at)), at
        if b is not None and "cpu_us_per_chunk" in b:
            lines.append(f"| {n_at} turns: event-loop CPU per streamed chunk, before → after | "
                         f"{_fmt(b['cpu_us_per_chunk'], ' µs')} → {_fmt(a['cpu_us_per_chunk'], ' µs')} | — |")
    lines.append(
        f"| {n_at} turns: loop-lag p99 while they arrive / all stream / they finish | "
        f"{_fmt(at['lag_p99_arriving_ms'], ' ms')} / {_fmt(at['lag_p99_streaming_ms'], ' ms')} / "
        f"{_fmt(at['lag_p99_finishing_ms'], ' ms')} | — |")
    lines += [
        f"| {n_at} turns: event loop's share of its core / other threads' CPU seconds / seconds its "
        f"threads waited for the core (other processes) | {_fmt(at['cpu_loop_share'])} / "
        f"{_fmt(at['cpu_other_threads_s'], ' s')} / {_fmt(at['runqueue_wait_s'], ' s')} | — |",
        f"| {n_at} turns: time to first text, caller p50 / p99 (bare client p50) | "
        f"{_fmt(at['ttft_caller_p50_ms'], ' ms')} / {_fmt(at['ttft_caller_p99_ms'], ' ms')} "
        f"({_fmt(at['bare_ttft_p50_ms'], ' ms')}) | — |",
        f"| {n_at} turns: characters lost between stream and sink | {at['chars_lost']['max']} | 0 |",
    ]
    if "idle" in res:
        idle = res["idle"]
        lines += [
            f"| single turn at idle: time to first text from the caller / bare aiohttp reader | "
            f"×{_fmt(idle['ttft_ratio'])} ({_fmt(idle['parley_ttft_ms'], ' ms')} vs "
            f"{_fmt(idle['raw_ttft_ms'], ' ms')}) | small |",
            f"| single turn at idle: whole answer out of the engine / bare reader's whole stream "
            f"(20 chunks) | ×{_fmt(idle['total_ratio'])} | small |",
            f"| single turn at idle: request to the whole answer shown in the sink (the sink's "
            f"0.8 s between edits included) | {_fmt(idle['all_shown_ms'], ' ms')} | — |",
        ]
    if "memory" in res:
        mem = res["memory"]
        per = ", ".join(f"{m['traced_kb_per_turn']:g}" for m in mem["cells"])
        lines.append(
            f"| memory per active turn (traced, slope over {', '.join(str(m['n']) for m in mem['cells'])} "
            f"turns; each size: {per} KB) | {mem['traced_kb_per_turn_slope']:g} KB | — |")
    if "events" in res:
        lines.append(f"| events one turn carries through renderer and sink (unpaced) | "
                     f"{_fmt(res['events']['events_per_second'], '/s')} | — |")
    if "compare" in res:
        lines += [f"| compare wall / slowest single turn, {k} providers | {_fmt(v)} | ≤ 1.05 |"
                  for k, v in res["compare"].items()]
    if "console_render" in res:
        con = res["console_render"]
        lines.append(f"| console render, 3 / 8 side-by-side panels | {_fmt(con['3'], ' ms')} / "
                     f"{_fmt(con['8'], ' ms')} per frame | < 83 ms (12 fps) |")
    return lines


def chart(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    conc = res["concurrency"]
    ns = [int(k) for k in conc]

    def band(ax: Any, key: str, label: str, scale: float = 1.0) -> None:
        med = [conc[k][key]["median"] * scale for k in conc]
        lo = [conc[k][key]["min"] * scale for k in conc]
        hi = [conc[k][key]["max"] * scale for k in conc]
        ax.errorbar(ns, med, yerr=[[m - a for m, a in zip(med, lo, strict=True)],
                                   [b - m for m, b in zip(med, hi, strict=True)]],
                    marker="o", capsize=3, label=label)

    band(axes[0], "lag_p99_ms", "p99")
    band(axes[0], "lag_p50_ms", "p50")
    if "before" in res:
        bc = res["before"]["concurrency"]
        axes[0].plot([int(k) for k in bc], [bc[k]["lag_p99_ms"]["median"] for k in bc], marker="x",
                     linestyle="--", color="grey", label="p99 before")
    axes[0].axhline(TARGET_P99, color="red", linestyle="--", label=f"{TARGET_P99:g} ms")
    axes[0].axvline(TARGET_TURNS, color="grey", linestyle=":")
    axes[0].set(title="event-loop lag, end to end (1 core)", xlabel="concurrent turns (50 chunks/s each)",
                ylabel="ms")
    axes[0].legend()
    band(axes[1], "ttft_caller_p50_ms", "Parley, from the caller (p50)")
    band(axes[1], "bare_ttft_p50_ms", "bare aiohttp client (p50)")
    axes[1].set(title="time to first text under load", xlabel="concurrent turns", ylabel="ms")
    axes[1].legend()
    if "memory" in res:
        mem = res["memory"]["cells"]
        axes[2].plot([m["n"] for m in mem], [m["traced_kb"] / 1024 for m in mem], marker="o",
                     label=f"traced ({res['memory']['traced_kb_per_turn_slope']:g} KB/turn)")
        axes[2].plot([m["n"] for m in mem], [m["rss_mb"] for m in mem], marker="s", label="RSS")
        axes[2].set(title="memory of active turns", xlabel="turns", ylabel="MB")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=RUNS)
    p.add_argument("--quick", action="store_true", help="one run per cell; results not written")
    p.add_argument("--only", default="", help="concurrency cells only, e.g. 500 or 250,500 (results not written)")
    p.add_argument("--profile", default="", help="cProfile the last run of the last cell into this file")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--before", default="", help="the JSON of an --only run of the code before a change, "
                   "to show beside this run (it keeps its own date, load and runs)")
    p.add_argument("--resummarize", action="store_true", help="no run: rewrite the summary and chart of "
                   "bench/results/core.json (with --before: with that run beside it)")
    args = p.parse_args(argv if argv is not None else [])
    if args.quick:
        args.runs = 1
    if args.resummarize:
        data = json.loads((RESULTS / "core.json").read_text())
        res = data["results"]
    else:
        data = {}
        res = asyncio.run(run_all(args))
    if args.before:
        before = json.loads(Path(args.before).read_text())
        res["before"] = {"date": before.get("date"), "runs": before.get("runs"),
                         "load_average": before.get("load_average"),
                         "concurrency": before["results"]["concurrency"]}
    runs = data.get("runs", args.runs)
    summary = summarize(res, runs)
    print("\n".join(summary))
    data = {"date": data.get("date") or datetime.now(UTC).strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores",
            "python": sys.version.split()[0], "runs": runs,
            "load_average": {"before": res["load_before"], "after": res["load_after"]},
            "results": res, "summary": summary}
    if args.quick or args.only or runs < RUNS:
        out = Path(tempfile.gettempdir()) / "core_bench.json"
        out.write_text(json.dumps(data, indent=2))
        print(f"(not a result: written to {out})")
        return data
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "core.json").write_text(json.dumps(data, indent=2))
    chart(res, RESULTS / "core.png")
    return data


if __name__ == "__main__":
    main(sys.argv[1:])
