"""Replica benchmark: one Slack workspace served by 1, 2 and 3 replicas behind a round-robin proxy.

    python -m bench.replica_bench

Each replica is its own process serving Slack over HTTP (``python -m bench.replica_bench
replica``: the same SlackFront, web app and services ``parley slack`` runs, with its Slack
budgets' clock compressed), all behind one loopback round-robin proxy (tests/fakes/proxy.py)
as a load balancer puts them behind one Request URL. Replicas share PostgreSQL
(PARLEY_DATABASE_URL) and Redis (PARLEY_REDIS_URL), each run on a fresh database. The
baseline, **one process**, is a single process as one deploys it: SQLite and no Redis.

The fake Slack Web API (its own process) enforces Slack's published limits per method per
workspace as sliding windows: chat.update 50/min (Tier 3), chat.startStream and
chat.stopStream 20/min (Tier 2), chat.appendStream 100/min (Tier 4), setStatus held to
50/min, chat.postMessage about 1/s per channel; every call takes ``LATENCY`` on the network.
The fake LLM streams each answer (1,200 characters, numbered words) at 5 chunks/s (12 s).

Two loads, the same for every setup, each cell ``RUNS`` times (medians, with min–max):

- **light**: 3 discussions at once, where the workspace's budget is not what binds:
  freshness compared with one process;
- **heavy**: 50 discussions at once, each in its own channel: throughput (discussions
  finished per minute, Slack calls per minute) where the budget binds.

Time is compressed ×SCALE (the fake's windows, Parley's budget windows and pacing, the
token rate and the network latency alike); every figure is in Slack seconds. Freshness is
the delay between a chunk leaving the LLM (its write on the SSE stream) and its text being
visible in the fake's copy of the message. The budget's own limit is given per heavy run
as a lower bound on its duration: the least time the fake's windows allow the calls that
run made (and the answer's own 12 s). CPU is the replicas' CPU time during the run (from
/proc), to show what binds: the platform's budget, not the machine.

Writes bench/results/replicas.json.
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
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCALE = 6.0
RUNS = 5
LATENCY = 0.05  # Slack seconds per Web API call
WORDS, CHUNK_CHARS, CHUNK_RATE = 240, 20, 5.0  # 1,199 characters in 60 chunks over 12 s
ANSWER = " ".join(f"w{i:03d}" for i in range(WORDS))
ANSWER_SECONDS = math.ceil(len(ANSWER) / CHUNK_CHARS) / CHUNK_RATE
LOADS = {"light": 3, "heavy": 50}
#: (name, replicas, shared): shared = PostgreSQL + Redis; the baseline is SQLite without Redis.
SETUPS = [("one process", 1, False), ("1 replica", 1, True), ("2 replicas", 2, True), ("3 replicas", 3, True)]
#: Slack's published limits per method per workspace, calls per minute (Tier 2 20+, Tier 3 50+,
#: Tier 4 100+: https://docs.slack.dev/apis/web-api/rate-limits).
PUBLISHED = {
    "chat.update": 50,
    "chat.startStream": 20,
    "chat.stopStream": 20,
    "chat.appendStream": 100,
    "assistant.threads.setStatus": 50,
}
POST_PER_CHANNEL = (2, 1.0)  # calls per seconds, per channel
LABEL = "`one/one-m`"


# --- a replica: what `parley slack` serves over HTTP, on a compressed clock ---------------------------


def replica_main(port: int, scale: float) -> None:
    """Serve Slack on 127.0.0.1:``port`` as `parley slack` does (bots.slack.main.serve, HTTP mode),
    with the workspace budgets' windows, the per-channel post rate, the renderer's interval
    between edits and the stream rollover all compressed ×``scale``."""
    from aiohttp import web
    from slack_sdk.web.async_client import AsyncWebClient

    from bots.slack.app import SlackFront
    from bots.slack.budgets import POST_PER_CHANNEL_PER_SECOND, WorkspaceBudgets
    from bots.slack.config import SlackSettings, api_url, check_tokens
    from bots.slack.sink import STREAM_LIFE, SlackSink
    from core import logs
    from core.config import Settings
    from core.services import build_services
    from core.threads import run_service

    settings, slack = Settings(), SlackSettings()
    logs.configure(settings.log_format)
    bot, _, secret = check_tokens(slack, http=True)
    SlackSink.min_interval = SlackSink.min_interval / scale

    def budgets() -> WorkspaceBudgets:
        return WorkspaceBudgets(window=60.0 / scale, post_rate=POST_PER_CHANNEL_PER_SECOND * scale)

    async def go() -> None:
        async with build_services(settings) as services:
            client = AsyncWebClient(token=bot, base_url=api_url(slack), timeout=30)
            front = SlackFront(services, client, signing_secret=secret, budgets=budgets,
                               stream_life=STREAM_LIFE / scale)
            await front.start()
            runner = web.AppRunner(front.web_app(), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                await asyncio.Event().wait()
            finally:
                await runner.cleanup()
                await front.shutdown()

    with contextlib.suppress(KeyboardInterrupt):
        run_service(go())


# --- the fakes ---------------------------------------------------------------------------------------------


def _serve_slack(port_q: mp.Queue, token: str) -> None:  # type: ignore[type-arg]
    from tests.fakes.slack_api import FakeSlackAPI

    async def go() -> None:
        fake = FakeSlackAPI(
            bot_token=token,
            limits={m: (n, 60.0 / SCALE) for m, n in PUBLISHED.items()},
            post_per_channel=(POST_PER_CHANNEL[0], POST_PER_CHANNEL[1] / SCALE),
            latency=LATENCY / SCALE,
        )
        await fake.start()
        port_q.put(fake.port)
        await asyncio.Event().wait()

    asyncio.run(go())


def timed_llm() -> Any:
    """The fake LLM, noting when each piece of text left it (per prompt)."""
    from aiohttp import web

    from tests.fakes.llm_server import FakeLLMServer

    class TimedLLM(FakeLLMServer):
        def __init__(self) -> None:
            super().__init__()
            self.emits: dict[str, list[tuple[float, str]]] = {}

        async def _begin(self, request: web.Request) -> Any:
            body, sc, error = await super()._begin(request)
            request["prompt"] = json.dumps(body.get("messages", ""))
            return body, sc, error

        async def _stream(self, request: web.Request) -> web.StreamResponse:
            resp = await super()._stream(request)
            marks = self.emits.setdefault(request["prompt"], [])
            write = resp.write

            async def noted(data: bytes) -> None:
                await write(data)
                for line in data.split(b"\n"):
                    if line.startswith(b"data: {"):
                        for choice in json.loads(line[6:]).get("choices") or []:
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                marks.append((time.monotonic(), text))

            resp.write = noted  # type: ignore[method-assign]
            return resp

    return TimedLLM()


# --- one run ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """The replicas of one run, started on a fresh database and stopped after it."""

    def __init__(self, n: int, env: dict[str, str], logdir: Path) -> None:
        self.procs: list[tuple[subprocess.Popen[bytes], int, Path]] = []
        self.logs = ""
        for i in range(n):
            port = free_port()
            log = logdir / f"replica{i}.log"
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.replica_bench", "replica", "--port", str(port), "--scale", str(SCALE)],
                env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
            )
            self.procs.append((proc, port, log))

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for _, port, _ in self.procs]

    async def ready(self, http: Any) -> None:
        import aiohttp

        for proc, port, log in self.procs:
            for _ in range(600):
                if proc.poll() is not None:
                    raise RuntimeError(f"a replica exited: {log.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"a replica did not start: {log.read_text()[-2000:]}")

    async def running(self, http: Any) -> int:
        total = 0
        for _, port, _ in self.procs:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                total += int((await r.json()).get("running", 0))
        return total

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p, _, _ in self.procs)

    def stop(self) -> None:
        for proc, _, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _, _ in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.logs = "".join(log.read_text() for _, _, log in self.procs)


@contextlib.asynccontextmanager
async def fleet(n: int, env: dict[str, str], logdir: Path, http: Any) -> AsyncIterator[Fleet]:
    f = Fleet(n, env, logdir)
    try:
        await f.ready(http)
        yield f
    finally:
        f.stop()


def analyse(dump: dict[str, Any], emits: dict[str, list[tuple[float, int]]], t0: float) -> dict[str, Any]:
    """Per channel: answers shown, characters lost, when it finished, and freshness delays."""
    by_channel: dict[str, list[dict[str, Any]]] = {}
    for m in dump["messages"]:
        by_channel.setdefault(m["channel"], []).append(m)
    delays: list[float] = []
    by_kind: dict[str, list[float]] = {"stream": [], "message": []}
    lost = dupes = unfinished = 0
    finished_at: list[float] = []
    for channel, marks in emits.items():
        msgs = by_channel.get(channel, [])
        answers = [m for m in msgs if m["thread_ts"] and m["history"][0][1].startswith(LABEL)]
        totals = [m for m in msgs if m["thread_ts"] and any("*Total*" in h[1] for h in m["history"])]
        dupes += max(0, len(answers) - 1) + max(0, len([m for m in msgs if not m["thread_ts"]]) - 1)
        if not totals:
            unfinished += 1
        else:
            finished_at.append(min(t for m in totals for t, h in m["history"] if "*Total*" in h) - t0)
        times, visible = [], []
        for m in answers[:1]:
            for t, text in m["history"]:
                body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
                times.append(t)
                visible.append(max(visible[-1] if visible else 0, len(body.removesuffix(" …").rstrip())))
        final = visible[-1] if visible else 0
        lost += max(0, marks[-1][1] - final) if marks else 0
        kind = answers[0]["kind"] if answers else "message"
        for t_emit, cum in marks:
            i = bisect.bisect_left(visible, cum)
            if i < len(visible):
                delays.append(max(0.0, times[i] - t_emit) * SCALE)
                by_kind.setdefault(kind, []).append(delays[-1])
    return {"delays": delays, "by_kind": by_kind, "lost_chars": lost, "duplicates": dupes,
            "unfinished": unfinished, "finished_at": finished_at,
            "streamed": sum(1 for ms in by_channel.values() for m in ms
                            if m["kind"] == "stream" and m["history"][0][1].startswith(LABEL))}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def budget_bound(methods: dict[str, int]) -> float:
    """The least time, in Slack seconds, the fake's sliding windows allow for these calls: a
    window of ``L`` per minute lets ``L`` through at once and the next ``L`` a minute later."""
    need = [60.0 * ((c - 1) // PUBLISHED[m]) for m, c in methods.items() if m in PUBLISHED and c > 0]
    return max([ANSWER_SECONDS, *need])


async def run_one(ctx: dict[str, Any], setup: tuple[str, int, bool], load: str) -> dict[str, Any]:
    from tests.fakes.proxy import RoundRobinProxy
    from tests.fakes.slack_api import sign

    name, n_replicas, shared = setup
    n = LOADS[load]
    llm, slack_root, http = ctx["llm"], ctx["slack_root"], ctx["http"]
    async with http.post(slack_root + "_reset") as r:
        assert r.status == 200
    llm.emits.clear()
    llm.requests.clear()
    work = Path(tempfile.mkdtemp(prefix="parley-replicas-", dir=ctx["tmp"]))
    env = dict(ctx["env"])
    if shared:
        env["PARLEY_DATABASE_URL"] = ctx["pg"].database()
        env["PARLEY_REDIS_URL"] = ctx["redis"].url()
    else:
        env["PARLEY_DB"] = str(work / "parley.db")
    async with fleet(n_replicas, env, work, http) as f, RoundRobinProxy(f.urls) as proxy:
        cpu0 = f.cpu()
        secret = env["SLACK_SIGNING_SECRET"]

        async def slash(d: int) -> None:
            body = urlencode({
                "team_id": "T0TEST", "channel_id": f"C{d:04d}", "user_id": f"U{d}", "command": "/compare",
                "text": f"provider:one Question d{d:04d}?", "api_app_id": "A0TEST",
                "response_url": slack_root + "hooks/response", "trigger_id": "1.2.3",
            })
            headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(secret, body)}
            async with http.post(proxy.url + "/slack/events", data=body, headers=headers) as r:
                assert r.status == 200, await r.text()

        t0 = time.monotonic()
        await asyncio.gather(*(slash(d) for d in range(n)))
        deadline = t0 + 600 / SCALE + 60
        # Done: every answer streamed out, then nothing runs on any replica.
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if len(llm.requests) >= n and await f.running(http) == 0:
                break
        t_end = time.monotonic()
        cpu = f.cpu() - cpu0
    logs = f.logs
    async with http.get(slack_root + "_dump") as r:
        dump = await r.json()
    emits: dict[str, list[tuple[float, int]]] = {}
    for prompt, marks in llm.emits.items():
        d = int(prompt.split("Question d", 1)[1][:4])
        text, cum = "", []
        for t, piece in marks:
            text += piece
            cum.append((t, len(text.rstrip())))
        emits[f"C{d:04d}"] = cum
    a = analyse(dump, emits, t0)
    wall = (max(a["finished_at"]) if a["finished_at"] else t_end - t0) * SCALE
    calls = dump["calls"]
    methods: dict[str, int] = {}
    for c in calls:
        methods[c[0]] = methods.get(c[0], 0) + 1
    # When the tiered calls were made: how many in each 10 Slack seconds from the first command.
    slots = max(1, math.ceil(wall / 10) + 1)
    timeline = {m: [0] * slots for m in ("chat.startStream", "chat.appendStream", "chat.stopStream", "chat.update")}
    for method, _, t in calls:
        if method in timeline:
            timeline[method][min(slots - 1, max(0, int((t - t0) * SCALE // 10)))] += 1
    return {
        "setup": name, "replicas": n_replicas, "shared": shared, "load": load, "discussions": n,
        "wall_s": round(wall, 1),
        "discussions_per_min": round(n / wall * 60, 1) if wall else None,
        "calls": len(calls),
        "calls_per_min": round(len(calls) / wall * 60, 1) if wall else None,
        "r429": sum(1 for c in calls if c[1] == 429),
        "lost_chars": a["lost_chars"], "duplicates": a["duplicates"], "unfinished": a["unfinished"],
        "fresh_p50_s": round(pct(a["delays"], 0.50), 2), "fresh_p95_s": round(pct(a["delays"], 0.95), 2),
        # by how the reply was written: a native stream, or posted then updated
        "fresh_p50_by_kind_s": {k: round(pct(v, 0.50), 2) for k, v in a["by_kind"].items()},
        "streamed_replies": a["streamed"],
        "budget_bound_s": budget_bound(methods),
        "replica_cpu_s": round(cpu, 2),
        "replica_cpu_cores": round(cpu / max(1e-9, t_end - t0), 2),
        "llm_requests": len(llm.requests),
        "tracebacks": logs.count("Traceback"),
        "methods": dict(sorted(methods.items())),
        "calls_per_10s": timeline,
        "by_replica": [len(proxy.sent_to(i)) for i in range(n_replicas)],
    }


# --- the whole benchmark --------------------------------------------------------------------------------


def provider_config(path: Path, llm_url: str) -> None:
    path.write_text(
        f'[providers.one]\nlabel = "one"\nbase_url = "{llm_url}"\nkey_env = "K_ONE"\ndefault_model = "one-m"\n'
        '[providers.one.models."one-m"]\ninput = 1.0\noutput = 2.0\n'
    )


def spread(values: list[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": round(statistics.median(vals), 2), "min": round(min(vals), 2), "max": round(max(vals), 2)}


async def bench(runs: int) -> list[dict[str, Any]]:
    """Every setup at every load, ``runs`` times; one row per run."""
    import aiohttp

    from tests.fakes.llm_server import Scenario
    from tests.servers import Postgres, Redis

    token = "xoxb-" + secrets.token_hex(12)
    mpctx = mp.get_context("spawn")
    q: mp.Queue = mpctx.Queue()  # type: ignore[type-arg]
    slack_proc = mpctx.Process(target=_serve_slack, args=(q, token), daemon=True)
    slack_proc.start()
    pg, redis = Postgres(), Redis()
    llm = timed_llm()
    rows: list[dict[str, Any]] = []
    try:
        await llm.start()
        llm.default = Scenario(text=ANSWER, chunk_chars=CHUNK_CHARS, chunk_delay=1 / (CHUNK_RATE * SCALE))
        slack_root = f"http://127.0.0.1:{q.get(timeout=30)}/"
        with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
            cfg = Path(tmp) / "providers.toml"
            provider_config(cfg, llm.base_url)
            keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
            env = keep | {
                "PARLEY_CONFIG": str(cfg), "K_ONE": "k-" + secrets.token_hex(8),
                "SLACK_BOT_TOKEN": token, "SLACK_SIGNING_SECRET": secrets.token_hex(16),
                "SLACK_API_URL": slack_root + "api/", "PARLEY_RETRY_BASE_DELAY": "0.01",
                "PARLEY_MAX_RUNNING_PER_WORKSPACE": "0", "PARLEY_MAX_RUNNING_PER_USER": "0",
                "PARLEY_LOG_FORMAT": "text",
            }
            async with aiohttp.ClientSession() as http:
                ctx = {"llm": llm, "slack_root": slack_root, "http": http, "env": env, "pg": pg, "redis": redis,
                       "tmp": tmp}
                for load in LOADS:
                    for k in range(runs):
                        for setup in SETUPS:  # interleaved, so drift over the session spreads over all
                            row = await run_one(ctx, setup, load)
                            row["run"] = k
                            print(json.dumps({x: v for x, v in row.items() if x != "methods"}), flush=True)
                            rows.append(row)
    finally:
        await llm.stop()
        pg.stop()
        redis.stop()
        slack_proc.terminate()
    return rows


def summarise(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    cells = []
    for load in LOADS:
        for name, n_replicas, shared in SETUPS:
            sel = [r for r in rows if r["load"] == load and r["setup"] == name]
            cell = {"load": load, "discussions": LOADS[load], "setup": name, "replicas": n_replicas,
                    "shared": shared, "runs": len(sel)}
            for key in ("wall_s", "discussions_per_min", "calls_per_min", "fresh_p50_s", "fresh_p95_s",
                        "budget_bound_s", "replica_cpu_cores"):
                cell[key] = spread([r[key] for r in sel])
            for key in ("r429", "lost_chars", "duplicates", "unfinished", "tracebacks"):
                cell[key] = sum(r[key] for r in sel)
            cells.append(cell)

    def cell(load: str, name: str) -> dict[str, Any]:
        return next(c for c in cells if c["load"] == load and c["setup"] == name)

    def fmt(s: dict[str, float], unit: str = "") -> str:
        return f"{s['median']:g}{unit} ({s['min']:g}–{s['max']:g})"

    lines = [
        f"Slack, one workspace, {min(c['runs'] for c in cells)} runs per cell, medians (min–max); time ×{SCALE:g} compressed, "
        "figures in Slack seconds.",
        "",
        "| load | setup | disc./min | Slack calls/min | fresh p50 | fresh p95 | budget bound | replica CPU "
        "(cores) | 429s | dupes | chars lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c['discussions']} at once | {c['setup']} | {fmt(c['discussions_per_min'])} | "
            f"{fmt(c['calls_per_min'])} | {fmt(c['fresh_p50_s'], ' s')} | {fmt(c['fresh_p95_s'], ' s')} | "
            f"{c['budget_bound_s']['median']:g} s | {fmt(c['replica_cpu_cores'])} | {c['r429']} | "
            f"{c['duplicates']} | {c['lost_chars']} |"
        )
    base = cell("light", "one process")
    ratios = []
    for name, _, _ in SETUPS[1:]:
        c = cell("light", name)
        ratios.append(f"{name} ×{c['fresh_p50_s']['median'] / base['fresh_p50_s']['median']:.2f} (p50), "
                      f"×{c['fresh_p95_s']['median'] / base['fresh_p95_s']['median']:.2f} (p95)")
    heavy = [cell("heavy", name) for name, _, _ in SETUPS]
    hbase = cell("heavy", "one process")
    hratios = [f"{name} ×{cell('heavy', name)['fresh_p50_s']['median'] / hbase['fresh_p50_s']['median']:.1f}"
               for name, _, _ in SETUPS[1:]]
    ceiling = PUBLISHED["chat.update"] + PUBLISHED["chat.stopStream"]
    lines += [
        "",
        "Freshness at the light load against one process: " + "; ".join(ratios) + ".",
        "Freshness p50 at the heavy load (the budget binds) against one process: " + "; ".join(hratios) + ".",
        f"Heavy load: {min(c['discussions_per_min']['median'] for c in heavy):g}–"
        f"{max(c['discussions_per_min']['median'] for c in heavy):g} discussions/min whatever the number of "
        f"replicas; the workspace's budget allows at most {ceiling} streamed replies a minute (each needs a "
        "chat.update or a chat.stopStream), and \"budget bound\" is the least time the fake's windows allow the "
        "calls each run made.",
    ]
    return cells, lines


def main(runs: int = RUNS) -> dict[str, Any]:
    started = time.monotonic()
    rows = asyncio.run(bench(runs))
    cells, summary = summarise(rows)
    data = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "bench_seconds": round(time.monotonic() - started),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "workload": {"answer_chars": len(ANSWER), "chunk_chars": CHUNK_CHARS, "chunk_rate": CHUNK_RATE,
                     "answer_seconds": ANSWER_SECONDS, "loads": LOADS, "scale": SCALE, "runs": RUNS,
                     "latency_s": LATENCY, "limits_per_min": PUBLISHED, "post_per_channel": POST_PER_CHANNEL},
        "cells": cells,
        "rows": rows,
        "summary": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replicas.json").write_text(json.dumps(data, indent=2) + "\n")
    print("\n".join(summary))
    return data


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.replica_bench")
    p.add_argument("what", nargs="?", choices=["bench", "replica"], default="bench")
    p.add_argument("--port", type=int)
    p.add_argument("--scale", type=float, default=SCALE)
    p.add_argument("--runs", type=int, default=RUNS, help="runs per cell (a quick look: 1)")
    args = p.parse_args()
    if args.what == "replica":
        replica_main(args.port, args.scale)
    else:
        main(args.runs)
